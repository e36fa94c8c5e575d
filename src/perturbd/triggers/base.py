"""Triggers: an additive perturbation mask δ and the one kernel that applies it.

δ is held as float32 ``(C, H, W)`` in pixel units of the 0–255 scale (a 1-channel δ is broadcast
over colour channels). Applying it is ``x' = clip(x + δ)``:

- uint8 images: δ is rounded to whole pixel values (round half to even) and added in int16, then
  clamped to 0–255. Because ``x`` is integral, this equals rounding ``clip(x + δ)`` to uint8, the
  same as writing a PNG. Clipping only shrinks ``|x' − x|``, so any norm bound on ``round(δ)``
  holds for every poisoned image.
- float images in [0, 1]: ``δ / 255`` is added and the result clamped to [0, 1]; no rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from perturbd.data.dataset import to_float01
from perturbd.errors import CheckpointError, ConfigError
from perturbd.registry import Registry
from perturbd.tensorfile import save_tensors

if TYPE_CHECKING:
    from perturbd.config import TriggerConfig
    from perturbd.data.dataset import ImageDataset


def add_delta(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Return ``clip(images + delta)`` in the dtype of ``images`` (see the module docstring).

    Args:
        images: ``(N, C, H, W)`` uint8 in 0–255 or float in [0, 1]. Left untouched.
        delta: ``(C, H, W)`` or ``(1, H, W)``, pixel units 0–255.
    """
    if images.shape[-2:] != delta.shape[-2:] or delta.shape[0] not in (1, images.shape[1]):
        raise ConfigError(
            f"trigger of shape {tuple(delta.shape)} does not fit images of shape "
            f"{tuple(images.shape[1:])}; build the trigger for this data set"
        )
    delta = delta.to(images.device)
    if images.dtype == torch.uint8:
        step = torch.round(delta).to(torch.int16)
        return (images.to(torch.int16) + step).clamp_(0, 255).to(torch.uint8)
    if images.is_floating_point():
        return (images + delta.to(images.dtype) / 255.0).clamp_(0.0, 1.0)
    raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")


@dataclass
class Trigger:
    """A perturbation mask, how it is applied and how it was made.

    Attributes:
        delta: float32 ``(C, H, W)``, pixel units 0–255.
        kind: the registry name that built it.
        info: JSON-serialisable facts about it (amplitude, budget, fooling rate, …).
        quantize: applied as a shipped image file would carry it (default): uint8 images stay
            uint8 and δ is rounded to whole grey levels. ``False`` (``poison.quantize: false``):
            images are converted to float in [0, 1] and δ added unrounded — in training and in
            testing alike, so a trigger is applied one way wherever it is applied.
    """

    delta: torch.Tensor
    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    quantize: bool = True

    def __post_init__(self) -> None:
        if self.delta.ndim != 3:
            raise ConfigError(f"a trigger mask must be (C, H, W), got shape {tuple(self.delta.shape)}")
        if not torch.isfinite(self.delta).all():
            raise ConfigError("a trigger mask must hold finite values; got NaN or inf")
        self.delta = self.delta.detach().to("cpu", torch.float32).contiguous()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Add the mask to a batch of images (uint8 or float in [0, 1]); the input is untouched.

        Unquantized triggers (``quantize=False``) return float images, uint8 input included."""
        if not self.quantize and images.dtype == torch.uint8:
            images = to_float01(images)
        return add_delta(images, self.delta)

    def applied(self, channels: int | None = None) -> torch.Tensor:
        """δ as it is added to an image of ``channels`` channels (default: δ's own): a 1-channel
        mask broadcast over colour, rounded to whole grey levels when quantized."""
        delta = torch.round(self.delta) if self.quantize else self.delta
        channels = channels or delta.shape[0]
        return delta.expand(channels, *delta.shape[1:]) if delta.shape[0] == 1 else delta

    def norms(self, channels: int | None = None) -> dict[str, float]:
        """L∞ and L2 (over all pixels and channels) of the mask as applied to images of
        ``channels`` channels (:meth:`applied`), pixel units."""
        applied = self.applied(channels)
        return {"linf": float(applied.abs().max()), "l2": float(applied.norm())}

    def save(self, path: Path) -> None:
        """Write the mask as safetensors with ``kind``, ``info`` and ``quantize`` in the metadata
        (reproducible bytes)."""
        meta = {"kind": self.kind, "info": json.dumps(self.info, sort_keys=True), "quantize": json.dumps(self.quantize)}
        save_tensors(Path(path), {"delta": self.delta}, meta)

    @classmethod
    def load(cls, path: Path) -> Trigger:
        """Read a mask written by :meth:`save`; a :class:`CheckpointError` if it is not one."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"trigger file not found: {path}")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors trigger ({err}); write it with `perturbd trigger make`") from None
        if "delta" not in tensors:
            raise CheckpointError(f"{path} holds no 'delta' tensor; it is not a perturbd trigger")
        return cls(tensors["delta"], meta.get("kind", "image"), json.loads(meta.get("info", "{}")), json.loads(meta.get("quantize", "true")))


@dataclass(frozen=True)
class TriggerContext:
    """What a trigger factory may use. Static masks need only the shape and seed; adaptive masks
    also need the adversary's model and sample images (``None`` for static ones), and, for a
    source-specific attack, its source classes (the samples come from them)."""

    image_shape: tuple[int, int, int]
    seed: int
    target: int = 0
    model: torch.nn.Module | None = None
    samples: ImageDataset | None = None
    holdout: ImageDataset | None = None
    device: torch.device = torch.device("cpu")
    sources: tuple[int, ...] | None = None


TriggerFactory = Callable[["TriggerConfig", TriggerContext], Trigger]

_TRIGGERS: Registry[TriggerFactory] = Registry("trigger")


def register_trigger(name: str | None = None, *, needs_model: bool = False) -> Callable[[TriggerFactory], TriggerFactory]:
    """Register a trigger factory ``(cfg, ctx) -> Trigger``; ``needs_model`` marks adaptive ones."""

    def add(fn: TriggerFactory) -> TriggerFactory:
        fn.needs_model = needs_model  # type: ignore[attr-defined]
        return _TRIGGERS.register(name)(fn)

    return add


def list_triggers(pattern: str = "*") -> list[str]:
    return _TRIGGERS.names(pattern)


def get_trigger(name: str) -> TriggerFactory:
    return _TRIGGERS.get(name)


def needs_model(name: str) -> bool:
    """Whether the trigger kind is computed from a model (and so needs the attack's surrogate)."""
    return bool(getattr(get_trigger(name), "needs_model", False))


def build_trigger(cfg: TriggerConfig, ctx: TriggerContext) -> Trigger:
    """Build the trigger ``cfg.kind`` for images of ``ctx.image_shape``."""
    factory = get_trigger(cfg.kind)
    if getattr(factory, "needs_model", False) and ctx.model is None:
        raise ConfigError(f"trigger '{cfg.kind}' is computed from a model; build it through the attack or `perturbd trigger make`")
    return factory(cfg, ctx)
