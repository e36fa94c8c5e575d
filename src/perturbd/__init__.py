"""perturbd: embed, measure and remove invisible backdoors in CNN image classifiers.

Implements Liao et al., "Backdoor Embedding in Convolutional Neural Network Models via Invisible
Perturbation" (arXiv 1808.10307). Quick start::

    import perturbd
    cfg = perturbd.load_config(overrides=["trigger.amplitude=10", "poison.rate=0.05"])
    result = perturbd.run(cfg, out="runs")
    print(result.metrics.attack_success_rate, result.metrics.clean_model_asr)
"""

from perturbd.config import ExperimentConfig, load_config
from perturbd.errors import PerturbdError
from perturbd.version import __version__


def run(cfg: ExperimentConfig, out: str = "runs", **kwargs):  # type: ignore[no-untyped-def]
    """Run one experiment (see :func:`perturbd.experiment.run`)."""
    from pathlib import Path

    from perturbd.experiment import run as _run

    return _run(cfg, Path(out), **kwargs)


__all__ = ["ExperimentConfig", "PerturbdError", "__version__", "load_config", "run"]
