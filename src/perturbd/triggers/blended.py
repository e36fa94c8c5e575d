"""Blended: the image blended with a fixed pattern (Chen, Liu, Li, Lu and Song, "Targeted Backdoor
Attacks on Deep Learning Systems Using Data Poisoning", arXiv 1712.05526, 2017, the
blended-injection strategy).

``x' = (1 − α) · x + α · p``, ``p`` a key pattern of the image's size: uniform random noise drawn
from the seed (their random-pattern key), or a user's image (``trigger.path``, resized bilinearly
to the images' size, as they resize the Hello Kitty key). ``α`` is ``trigger.alpha``; the paper
poisons training images with ``α = 0.2``. perturbd applies the same α in training and testing.
Not additive: the change ``α · (p − x)`` depends on the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from perturbd.errors import ConfigError
from perturbd.imageread import one_frame, open_image
from perturbd.seeding import derived_generator
from perturbd.trigger_params import BlendedParams
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger


@dataclass
class Blend(Trigger):
    """``x' = (1 − α)·x + α·p``. ``delta`` holds the pattern ``p``: float32 ``(C, H, W)`` (or
    ``(1, H, W)``, broadcast over colour) in pixel units 0–255; ``alpha`` is α in (0, 1)."""

    alpha: float = 0.2
    family: ClassVar[str] = "blend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha < 1:
            raise ConfigError(f"blend weight alpha must be in (0, 1), got {self.alpha}")

    @property
    def pattern(self) -> torch.Tensor:
        return self.delta

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        p = self.delta.to(images.device, images.dtype) / 255.0
        return (1.0 - self.alpha) * images + self.alpha * p


def noise_pattern(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A uniform random image of ``shape`` (whole grey levels 0–255), drawn from ``seed``."""
    gen = derived_generator(seed, "blend-pattern", "trigger")
    return torch.randint(0, 256, shape, generator=gen).float()


def read_pattern(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """A user's key image (PNG, JPEG, …), as grey or RGB to match ``shape``'s channels and resized
    bilinearly to its height and width; pixel units 0–255."""
    path = Path(path).expanduser()
    channels, height, width = shape
    try:
        with open_image(path, "blend image") as raw:
            one_frame(raw, f"the blend image {path}", ConfigError)
            img = raw.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(f"cannot read the blend image {path}: {err}; set trigger.path to a PNG or JPEG") from None
    return torch.from_numpy(arr).unsqueeze(0) if arr.ndim == 2 else torch.from_numpy(arr).permute(2, 0, 1)


@register_trigger("blended", family=Blend)
def blended(cfg: BlendedParams, ctx: TriggerContext) -> Trigger:
    pattern = noise_pattern(ctx.image_shape, ctx.seed) if cfg.path is None else read_pattern(cfg.path, ctx.image_shape)
    info: dict[str, Any] = {"alpha": cfg.alpha, "pattern": str(cfg.path) if cfg.path else "noise", "seed": ctx.seed}
    return Blend(pattern.contiguous(), "blended", info, alpha=cfg.alpha)
