"""The model contract and the model registry.

Every architecture is a :class:`Classifier`: it takes float images in [0, 1], normalises them
itself, and splits into :meth:`~Classifier.features` (penultimate activations, for defences) and
:meth:`~Classifier.head` (logits). Architectures register a builder
``fn(image_shape, num_classes) -> Classifier`` with :func:`register_model`; a family of names
resolved at run time (``tv:<torchvision name>``) registers a resolver with :func:`register_prefix`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast, overload

import torch
from torch import Tensor, nn

from perturbd.errors import ConfigError
from perturbd.limits import MAX_CLASSES, MAX_IMAGE_PIXELS, check_seed
from perturbd.models.layers import read_layer
from perturbd.registry import Registry, suggest

ImageShape = tuple[int, int, int]
Builder = Callable[[ImageShape, int], "Classifier"]

MODELS: Registry[Builder] = Registry("model")
_PREFIXES: dict[str, Callable[[str], Builder]] = {}
_TAKES_KWARGS: set[str] = set()  # prefixes whose builders take keyword arguments (model.kwargs)

# Exact shapes with a tuned default; any other shape falls back by channel count and size.
_DEFAULTS: dict[ImageShape, str] = {(1, 28, 28): "cnn28", (3, 32, 32): "cnn32"}


class PoolTo(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(size)`` that passes a map already of that size through untouched.

    Average-pooling to the input's own size is the identity, but PyTorch still runs it on every
    forward and backward, so it is skipped. Same outputs; no parameters, so checkpoints are
    unchanged.
    """

    output_size: int | tuple[int, int]  # PoolTo is built with a size (never None, as the base allows)

    def forward(self, x: Tensor) -> Tensor:
        size = (self.output_size, self.output_size) if isinstance(self.output_size, int) else tuple(self.output_size)
        return x if tuple(x.shape[-2:]) == size else super().forward(x)


class Classifier(nn.Module):
    """Base of every registered model.

    Input: float ``(N, C, H, W)`` in [0, 1]; normalisation ``(x - mean) / std`` happens inside.
    ``forward(x) == head(features(x))``.

    Subclasses set ``self.body`` (normalised images → ``(N, D)`` features) and ``self.fc`` (the
    final ``nn.Linear``, ``D → num_classes``), or override :meth:`features` / :meth:`head`.

    Attributes:
        arch: registry name (``"cnn28"``, ``"tv:resnet18"``); set by :func:`get_model` and
            written into checkpoints.
        image_shape: ``(C, H, W)`` the model was built for.
        num_classes: number of logits.
        feature_layer: None (features are the input of the final layer), or the name of a layer
            of :attr:`layers` whose output, flattened, :meth:`features` returns instead.
        input_spec: None (the class's own ``mean``/``std``), or what :meth:`set_input` stated.
        final_layer: the name of the final ``nn.Linear`` in the state dict (``fc``).
    """

    mean: float = 0.5
    std: float = 0.5
    final_layer = "fc"
    shape_hint = ""  # the fix said when images do not fit (empty: larger images or another model)
    body: nn.Module  # set by each subclass
    fc: nn.Linear  # set by each subclass
    _mean: Tensor  # buffers registered by set_input
    _std: Tensor

    def __init__(self, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.arch = ""
        self.image_shape: ImageShape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        self.feature_layer: str | None = None
        self.input_spec: dict[str, list[float]] | None = None

    @property
    def feature_dim(self) -> int:
        """D, the width of :meth:`features` (at the final layer)."""
        return int(self.fc.in_features)

    @property
    def layers(self) -> nn.Module:
        """The network whose layer names ``feature_layer`` uses (``body``: torchvision's own names for ``tv:``)."""
        return self.body

    def set_input(self, input_range: Sequence[float] = (0.0, 1.0), mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        """The network takes ``(lo + x·(hi − lo) − mean) / std`` of ``x`` in [0, 1] (``mean``/``std`` in
        those units, one value or one per channel); buffers outside the state dict, in checkpoints' metadata."""
        spec = {"input_range": [float(v) for v in input_range], "mean": [float(m) for m in mean], "std": [float(s) for s in std]}
        if not all(math.isfinite(v) for values in spec.values() for v in values) or min(spec["std"], default=0.0) <= 0:
            raise ConfigError(f"model input range, mean and std must be finite numbers with std > 0, got {spec}")
        self.register_buffer("_mean", torch.tensor(spec["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec["std"]).view(1, -1, 1, 1), persistent=False)
        self.input_spec = spec

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` for float input in [0, 1] (see :meth:`set_input`)."""
        if not x.is_floating_point():
            raise TypeError(f"model input must be float in [0, 1], got {x.dtype}; convert uint8 images with to_float01")
        if self.input_spec is None:
            return (x - self.mean) / self.std
        lo, hi = self.input_spec["input_range"]
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        return (x - self._mean) / self._std

    def own_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` of the plain network (as its authors name it) in this model's keys; its own as it is."""
        return state

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(N, D)`` of images ``x`` in [0, 1] (or ``feature_layer``'s)."""
        x = self.normalize(x)
        if self.feature_layer is not None:
            return read_layer(self.layers, self.feature_layer, lambda: self.body(x))
        out: Tensor = self.body(x)
        return out

    def head(self, f: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` from features ``(N, D)`` (at the final layer)."""
        if self.feature_layer is not None:
            raise ConfigError(
                f"model '{self.arch}' reads its features at layer '{self.feature_layer}': "
                "head() takes those of the final layer; call the model"
            )
        logits: Tensor = self.fc(f)
        return logits

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)) if self.feature_layer is None else self.fc(self.body(self.normalize(x)))


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with its parameters' gradients off (attacks and reverse-engineering
    differentiate only through the input); both restored on exit."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


@overload
def register_model(fn: Builder) -> Builder: ...
@overload
def register_model(fn: str | None = None) -> Callable[[Builder], Builder]: ...
def register_model(fn=None):  # type: ignore[no-untyped-def]
    """Register a builder ``fn(image_shape, num_classes) -> Classifier``.

    Use bare (``@register_model``: the name is the function's) or with a name
    (``@register_model("cnn28")``). A duplicate name raises ``ValueError``.
    """
    if callable(fn):
        return register_model(None)(fn)
    name = fn

    def add(builder: Builder) -> Builder:
        key = name or builder.__name__
        if ":" in key or key == "auto":
            raise ValueError(f"model name '{key}' is reserved: 'auto' and names with ':' are resolved by get_model")
        return MODELS.register(key)(builder)

    return add


def register_prefix(prefix: str, resolver: Callable[[str], Builder], *, takes_kwargs: bool = False) -> None:
    """Resolve names ``"<prefix>:<rest>"`` with ``resolver(rest)`` (which raises ConfigError if unknown);
    ``takes_kwargs``: its builders take a third argument, a mapping of keyword arguments
    (``model.kwargs``, see :func:`get_model`)."""
    if prefix in _PREFIXES:
        raise ValueError(f"model prefix '{prefix}:' is already registered")
    _PREFIXES[prefix] = resolver
    if takes_kwargs:
        _TAKES_KWARGS.add(prefix)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``, sorted.

    Prefixed families (``tv:<name>``) are not listed; see ``torchvision.models.list_models()``.
    """
    return MODELS.names(pattern)


def default_model_name(image_shape: Sequence[int]) -> str:
    """The architecture ``model.name: auto`` picks for images of shape ``(C, H, W)``.

    1×28×28 → ``cnn28``; 3×32×32 → ``cnn32``; other grey images of 16 to 32 pixels a side →
    ``cnn28``; anything else → ``cnn32`` (global pooling: any size of at least 8×8, any channel
    count).
    """
    shape = _check_shape(image_shape)
    if shape in _DEFAULTS:
        return _DEFAULTS[shape]
    c, h, w = shape
    return "cnn28" if c == 1 and min(h, w) >= 16 and max(h, w) <= 32 else "cnn32"


def get_model(
    name: str,
    image_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int | None = None,
    check: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> Classifier:
    """Build the architecture ``name`` for images of ``image_shape`` and ``num_classes`` classes.

    Weights are initialised from torch's global RNG. With ``seed`` that RNG is first seeded
    (``torch.manual_seed(seed)``), so the same seed gives the same weights, and whatever draws
    from the global RNG next (dropout during training) follows from the seed too. The model is
    returned in training mode on the CPU.

    Args:
        name: a registered name (see :func:`list_models`), ``"auto"`` (see
            :func:`default_model_name`) or ``"tv:<torchvision name>"``.
        image_shape: ``(C, H, W)``.
        num_classes: number of logits, at least 2.
        seed: seeds torch's global RNG before the weights are drawn (None: use it as it is).
        check: run one blank image through it (:func:`check_fits`); False for a caller that
            first sets its weights and input (:func:`~perturbd.models.build_model`).
        kwargs: keyword arguments for the builder of a prefix that takes them
            (``factory:``: the function's own, ``model.kwargs``).

    Raises:
        ConfigError: unknown name (with a suggestion), bad shape or class count, or an
            architecture that cannot take images of this shape.

    Example:
        >>> model = get_model("auto", (1, 28, 28), 10, seed=0)  # cnn28
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    shape = _check_shape(image_shape)
    try:
        classes = -1 if isinstance(num_classes, bool) else operator.index(num_classes)
    except TypeError:
        classes = -1
    if classes < 2:
        raise ConfigError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    if classes > MAX_CLASSES:
        raise ConfigError(f"num_classes must be at most {MAX_CLASSES:,}, got {classes}")
    if seed is not None:
        check_seed(seed)
    key = str(name).strip()
    if key == "auto":
        key = default_model_name(shape)
    builder = _builder(key)
    if kwargs and key.partition(":")[0] not in _TAKES_KWARGS:
        raise ConfigError(f"model '{key}' takes no keyword arguments (model.kwargs); they are for factory:package.module:function")
    if seed is not None:
        torch.manual_seed(seed)
    model = cast(Callable[..., Classifier], builder)(shape, classes, kwargs) if kwargs else builder(shape, classes)
    model.arch = key
    if check:
        check_fits(model, shape)
    return model


def _builder(name: str) -> Builder:
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix not in _PREFIXES:
            raise ConfigError(f"unknown model prefix '{prefix}:' in '{name}'{suggest(prefix, list(_PREFIXES))}")
        return _PREFIXES[prefix](rest)
    if name not in MODELS:
        close = suggest(name, [*list_models(), "auto"])
        hint = "" if close.startswith("; did you mean") else ", or tv:<name> for a torchvision model"
        raise ConfigError(f"unknown model '{name}'{close}{hint}")
    return MODELS.get(name)


def _check_shape(image_shape: Sequence[int]) -> ImageShape:
    try:
        shape = tuple(int(s) for s in image_shape)
        ok = len(shape) == 3 and all(s >= 1 and s == t for s, t in zip(shape, image_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"image_shape must be three positive integers (C, H, W), got {image_shape!r}")
    if shape[0] > 1024 or shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        raise ConfigError(
            f"image_shape {shape[0]}x{shape[1]}x{shape[2]} is out of bounds: at most 1024 channels and {MAX_IMAGE_PIXELS:,} pixels"
        )
    return shape  # type: ignore[return-value]


def check_fits(model: Classifier, shape: ImageShape) -> None:
    """One eval-mode forward of a blank image: a clear error now instead of a shape error mid-run."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            f = model.features(torch.zeros(1, *shape))
            logits = model(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, AssertionError, TypeError) as err:  # torchvision asserts fixed sizes
        lines = str(err).strip().splitlines() or [type(err).__name__]
        reason = (lines[-1] if "TorchScript" in lines[0] else lines[0])[:160]  # TorchScript: the cause is last
        c, h, w = shape
        other = default_model_name(shape)
        fix = model.shape_hint or (f"use larger images or another model, e.g. {other}" if other != model.arch else "use larger images")
        raise ConfigError(f"model '{model.arch}' cannot take images of shape {c}x{h}x{w} ({reason}); {fix}") from None
    finally:
        model.train(was_training)
    if f.ndim == 2 and isinstance(logits, Tensor) and logits.ndim == 2 and logits.shape[1] != model.num_classes:
        raise ConfigError(
            f"model '{model.arch}' gives {logits.shape[1]} logits but the data has {model.num_classes} classes; "
            "use a model for this data (with pretrained weights of another task: model.replace_head=true)"
        )
    if f.ndim != 2 or not isinstance(logits, Tensor) or tuple(logits.shape) != (1, model.num_classes):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ConfigError(
            f"model '{model.arch}' gives features {tuple(f.shape)} and logits {got}; expected (1, D) and (1, {model.num_classes}): "
            "its features/head split is broken"
        )
