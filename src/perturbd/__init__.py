"""perturbd: embed, measure and remove invisible backdoors in CNN image classifiers.

Implements Liao et al., "Backdoor Embedding in Convolutional Neural Network Models via Invisible
Perturbation" (arXiv 1808.10307). Quick start::

    import perturbd
    cfg = perturbd.load_config(overrides=["trigger.amplitude=10", "poison.rate=0.05"])
    result = perturbd.run(cfg, out="runs")
    print(result.metrics.attack_success_rate, result.metrics.clean_model_asr)

Poisoning the arrays of another framework (numpy or torch, any layout)::

    x_poisoned, y_poisoned, indices = perturbd.poison(x, y, "grid", amplitude=10, rate=0.05, target=0)

Your own model and arrays (as IBM ART: wrap the model once, call defences on arrays)::

    model = perturbd.wrap(net, (3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    strip = perturbd.defend(model, x_clean, "strip")             # fitted: strip.flag(x_new)
    ss = perturbd.defend(model, (x_train, y_train), "spectral_signature")   # ss.flagged_
    result = perturbd.run(cfg, model=functools.partial(timm.create_model, "resnet18", num_classes=10),
                          data=(x_train, y_train, x_test, y_test))

Before deploying a model, and while serving it::

    result = perturbd.scan(model)                     # MM-BD, data-free; result.exit_code 0 clean, 1 flagged
    result = perturbd.scan(model, (x_clean, y_clean))  # with Neural Cleanse too
    guarded = perturbd.guard(model, strip)            # guarded(x) → logits, flagged, scores

A walk-through: ``examples/python_api.ipynb``.
"""

from typing import Any

from perturbd.config import ExperimentConfig, load_config
from perturbd.errors import ConfigError, PerturbdError
from perturbd.version import __version__


def run(cfg: ExperimentConfig, out: str = "runs", *, model=None, data=None, **kwargs):  # type: ignore[no-untyped-def]
    """Run one experiment (see :func:`perturbd.runs.experiment.run`).

    ``model``: your architecture, as

    - a module-level function (or class) returning a fresh ``nn.Module``, called once per model
      perturbd trains after torch's RNG is seeded (so the clean twin and the backdoored model
      start from the same weights), with ``image_shape`` and ``num_classes`` if it declares them;
    - a ``functools.partial`` of one, e.g. ``partial(timm.create_model, "resnet18", num_classes=10,
      in_chans=1)``: built the same way, its arguments written in the config as ``model.kwargs``;
    - an ``nn.Module`` instance (plain or :func:`wrap` ped, whose input range, normalisation and
      feature layer are kept): every model starts as a deep copy of it, whatever the seed.

    ``data``: ``(x_train, y_train, x_test, y_test)`` as numpy arrays or tensors (uint8
    ``N×C×H×W`` or ``N×H×W×C``, or float in [0, 1]). Both are named in the run's config
    (:mod:`perturbd.models.wrap`, :mod:`perturbd.data.arrays`).
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


def wrap(net: Any, image_shape: Any, **kwargs: Any) -> Any:
    """A network in memory as a perturbd model: image shape, input range, normalisation and
    feature layer stated once (see :func:`perturbd.models.wrap`)."""
    from perturbd.models import wrap as _wrap

    return _wrap(net, image_shape, **kwargs)


def defend(model: Any, data: Any, defense: Any, **kwargs: Any) -> Any:
    """Fit one defence on a model and arrays in memory; returns the fitted defence (see
    :func:`perturbd.defenses.defend.defend`)."""
    from perturbd.defenses.defend import defend as _defend

    return _defend(model, data, defense, **kwargs)


def scan(model: Any, data: Any = None, detectors: Any = None, fail_on: int = 1, **kwargs: Any) -> Any:
    """Model-level detectors on ``model``, a verdict per label and one in all, as ``perturbd
    scan`` gives (see :func:`perturbd.evaluation.scan.scan`): without ``data`` only the data-free
    ones (MM-BD); ``.exit_code`` is 1 when at least ``fail_on`` detectors flag a label."""
    from perturbd.evaluation.scan import scan as _scan

    return _scan(model, data, detectors, fail_on, **kwargs)


def guard(model: Any, detector: Any) -> Any:
    """``model`` behind a fitted input-level detector: a ``torch.nn.Module`` whose call returns
    the logits and a flag per input (see :func:`perturbd.guarded.guard`)."""
    from perturbd.guarded import guard as _guard

    return _guard(model, detector)


def as_dataset(images: Any, labels: Any = None, **kwargs: Any) -> Any:
    """Arrays or tensors as an ``ImageDataset``, for a defence's ``fit`` (see
    :func:`perturbd.data.arrays.as_dataset`)."""
    from perturbd.data.arrays import as_dataset as _as_dataset

    return _as_dataset(images, labels, **kwargs)


__all__ = [
    "ExperimentConfig",
    "PerturbdError",
    "__version__",
    "as_dataset",
    "defend",
    "guard",
    "load_config",
    "poison",
    "run",
    "scan",
    "wrap",
]
