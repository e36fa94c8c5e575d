"""perturbd: embed, measure and remove invisible backdoors in CNN image classifiers.

Implements Liao et al., "Backdoor Embedding in Convolutional Neural Network Models via Invisible
Perturbation" (arXiv 1808.10307). Quick start::

    import perturbd
    cfg = perturbd.load_config(overrides=["trigger.amplitude=10", "poison.rate=0.05"])
    result = perturbd.run(cfg, out="runs")
    print(result.metrics.attack_success_rate, result.metrics.clean_model_asr)

Poisoning the arrays of another framework (numpy or torch, any layout)::

    x_poisoned, y_poisoned, indices = perturbd.poison(x, y, "grid", amplitude=10, rate=0.05, target=0)
"""

from typing import Any

from perturbd.config import ExperimentConfig, load_config
from perturbd.errors import ConfigError, PerturbdError
from perturbd.version import __version__


def run(cfg: ExperimentConfig, out: str = "runs", *, model=None, data=None, **kwargs):  # type: ignore[no-untyped-def]
    """Run one experiment (see :func:`perturbd.runs.experiment.run`).

    ``model``: a function returning a fresh ``nn.Module`` (your architecture; called once per model
    perturbd trains, seeded); ``data``: ``(x_train, y_train, x_test, y_test)`` as numpy arrays or
    tensors (uint8 ``N×C×H×W`` or ``N×H×W×C``). Both are named in the run's config.
    """
    from pathlib import Path

    from perturbd.runs.experiment import run as _run

    if not isinstance(cfg, ExperimentConfig):
        raise ConfigError(f"cfg must be an ExperimentConfig (perturbd.load_config(...)), got {type(cfg).__name__}")
    return _run(cfg, Path(out), model=model, data=data, **kwargs)


def poison(x: Any, y: Any, trigger: Any, **kwargs: Any) -> Any:
    """Poison the arrays of another framework exactly as a perturbd run does (see
    :func:`perturbd.poisoning.poison`): returns ``(x, y, indices)`` in the caller's layout and type."""
    from perturbd.poisoning import poison as _poison

    return _poison(x, y, trigger, **kwargs)


__all__ = ["ExperimentConfig", "PerturbdError", "__version__", "load_config", "poison", "run"]
