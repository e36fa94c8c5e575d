"""A model object from Python, as perturbd takes it: :func:`wrap`, and the ``model=`` of :func:`perturbd.run`.

:func:`wrap` is the one public way to hand perturbd a network it did not build, in memory (as
ART's ``PyTorchClassifier`` wraps a module): it states the image shape, how the network takes its
input (range, normalisation) and where its features are read, and returns an
:class:`~perturbd.models.ExternalModel`, a :class:`~perturbd.models.Classifier` that every
defence takes (float images in [0, 1] in, logits out, ``features()``/``head()`` for the defences
that read penultimate activations). The network is held, not copied: a mitigation repairs a copy,
and nothing else changes its weights.

:func:`model_section` turns what ``perturbd.run(cfg, model=...)`` was given into the config's
model section, so that the run directory's hash and config name the model:

- a module-level function or class returning a fresh ``nn.Module`` (``factory:module:name``);
- ``functools.partial(fn, *args, **kwargs)``, e.g. ``partial(timm.create_model, "resnet18",
  num_classes=10, in_chans=1)``: ``factory:<fn's module>:<fn's name>`` with the arguments, bound
  to their names, in ``model.kwargs`` (they must be values a config can hold: numbers, strings,
  booleans, None, lists and mappings of those);
- an ``nn.Module`` instance (plain, or from :func:`wrap`, whose stated input and feature layer
  become ``model.input_range``/``mean``/``std``/``features``): ``module:<digest>``, the SHA-256 of
  its class, structure and weights, kept in this process only (as ``arrays:`` data).

Every model a run builds (the clean twin, the backdoored model, the adversary's under knowledge
``model``) is built the same way: a factory is called again after torch's RNG is seeded, so each
starts from the same initial weights for a seed; a module instance is deep-copied, so each starts
from the instance's own weights whatever the seed (the seed still orders the data and draws the
poison). Pass a factory for seeds that vary the initial weights.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from perturbd.config import ModelConfig
from perturbd.errors import ConfigError
from perturbd.models.base import Builder, Classifier, check_fits, register_prefix
from perturbd.models.external import ExternalModel, register_factory, state_input

_MODULES: dict[str, nn.Module] = {}  # module:<digest> → the instance given to perturbd.run(model=...)


def wrap(
    net: nn.Module,
    image_shape: Sequence[int],
    *,
    num_classes: int | None = None,
    input_range: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    features: str | None = None,
) -> ExternalModel:
    """``net`` as a perturbd model: what every defence, :func:`perturbd.defend` and ``perturbd.run`` take.

    Args:
        net: a network taking float images ``(N, C, H, W)`` (as ``input_range``/``mean``/``std``
            state) and returning logits ``(N, K)``; held, not copied.
        image_shape: ``(C, H, W)`` of the images it takes.
        num_classes: K; None: read from one blank image.
        input_range: the pixel range ``net`` takes, e.g. ``(0, 255)``; default ``(0, 1)``.
        mean: subtracted in the normalisation ``(x - mean) / std`` applied before ``net``, in
            ``input_range`` units, one value or one per channel (e.g. ImageNet's three); default none.
        std: divided by in that normalisation, as ``mean``; default none.
        features: the layer (``net.named_modules()`` name, e.g. ``"layer4"``) whose output,
            flattened, dataset screening reads; default the input of the last ``nn.Linear``.

    Returns:
        An :class:`~perturbd.models.ExternalModel`: float images in [0, 1] in, logits out;
        ``features()``/``head()`` split at the last linear layer when it gives the logits.

    Raises:
        ConfigError: one line, before any work: not a module, a bad shape or normalisation, a
            layer that does not exist, a network that cannot take these images.

    Example:
        >>> import torchvision, perturbd
        >>> net = torchvision.models.resnet18(num_classes=10)
        >>> model = perturbd.wrap(net, (3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        >>> model.feature_dim
        512
    """
    if not isinstance(net, nn.Module):
        raise ConfigError(f"wrap() takes a torch.nn.Module, got {type(net).__name__}")
    if isinstance(net, ExternalModel):
        raise ConfigError("this model is wrapped already; wrap its network (model.net) to state other settings")
    shape = _shape(image_shape)
    classes = _logits(net, shape) if num_classes is None else num_classes
    model = ExternalModel(net, shape, classes)
    model.arch = f"wrapped:{type(net).__name__}"
    state_input(model, input_range, mean, std, features, where="")
    check_fits(model, model.image_shape)
    model.check_split()
    return model


def _shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"image_shape must be (C, H, W), three positive integers, got {image_shape!r}")
    return shape


def _logits(net: nn.Module, shape: tuple[int, int, int]) -> int:
    """The width of ``net``'s output for one blank image (eval mode, restored)."""
    was_training = net.training
    net.eval()
    device = next(iter(net.parameters()), torch.zeros(0)).device
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *shape, device=device))
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(
            f"{type(net).__name__} cannot take images of shape {'x'.join(map(str, shape))} ({reason}); "
            "give it images of the shape it takes (grey images reach an RGB network through perturbd.wrap with three mean values)"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{type(net).__name__} gives {got} for one image; wrap() takes a network returning logits (N, K)")
    return int(out.shape[1])


# --------------------------------------------------------------------------- module:<digest>


def register_module(net: nn.Module) -> str:
    """Keep ``net`` in this process as the model ``module:<16 hex digits>`` (the SHA-256 of its
    class, structure and state dict); returns that name. Each model built from it is a deep copy."""
    h = hashlib.sha256(f"{type(net).__module__}.{type(net).__qualname__}\n{net!r}".encode())
    for key, value in net.state_dict().items():
        h.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    name = f"module:{h.hexdigest()[:16]}"
    _MODULES[name] = net
    return name


def _resolve_module(rest: str) -> Builder:
    name = f"module:{rest}"
    if name not in _MODULES:
        raise ConfigError(
            f"model '{name}' is an nn.Module given to perturbd.run(model=...) in another process; "
            "pass it again, or name a factory the run can build (factory:package.module:function)"
        )
    net = _MODULES[name]

    def build(image_shape: Sequence[int], num_classes: int) -> Classifier:
        return ExternalModel(copy.deepcopy(net), image_shape, num_classes)

    return build


register_prefix("module", _resolve_module)


# --------------------------------------------------------------------------- perturbd.run(model=...)


def model_section(model: object, spec: ModelConfig) -> ModelConfig:
    """``spec`` with the model given to ``perturbd.run(cfg, model=...)`` in it (see the module
    docstring): a function or class, a ``functools.partial``, or an ``nn.Module`` instance."""
    if isinstance(model, ExternalModel):
        stated = model.input_spec or {}
        update: dict[str, Any] = {"name": register_module(model.net), "kwargs": {}}
        update |= {key: stated[key] for key in ("input_range", "mean", "std") if key in stated}
        if model.feature_layer is not None:
            update["features"] = model.feature_layer
        return _section(spec, update)
    if isinstance(model, nn.Module):
        return _section(spec, {"name": register_module(model), "kwargs": {}})
    if isinstance(model, functools.partial):
        return _section(spec, {"name": register_factory(model.func), "kwargs": {**spec.kwargs, **_partial_kwargs(model)}})
    return _section(spec, {"name": register_factory(model), "kwargs": {}})  # type: ignore[arg-type]  # register_factory checks


def _section(spec: ModelConfig, update: dict[str, Any]) -> ModelConfig:
    return ModelConfig.model_validate({**spec.model_dump(), **update})


def _partial_kwargs(p: functools.partial[Any]) -> dict[str, Any]:
    """A partial's positional and keyword arguments by parameter name, checked to be config values."""
    fn: Callable[..., Any] = p.func
    short = getattr(fn, "__name__", "fn")
    if p.args:
        try:
            bound = inspect.signature(fn).bind_partial(*p.args).arguments
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"model=functools.partial({short}, ...): its positional arguments cannot be named ({err}); pass them by keyword"
            ) from None
        if any(inspect.signature(fn).parameters[k].kind is inspect.Parameter.VAR_POSITIONAL for k in bound):
            raise ConfigError(f"model=functools.partial({short}, ...): a config holds named arguments only; pass them by keyword")
    else:
        bound = {}
    out = {**bound, **p.keywords}
    for key, value in out.items():
        if not _config_value(value):
            raise ConfigError(
                f"model=functools.partial({short}, ..., {key}=...): {type(value).__name__} is not a value a config can hold "
                "(numbers, strings, booleans, None, lists and mappings of those); build it inside a module-level function"
            )
    return dict(out)


def _config_value(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_config_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _config_value(v) for k, v in value.items())
    return False
