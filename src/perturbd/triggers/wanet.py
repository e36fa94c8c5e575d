"""WaNet: an imperceptible warp of the image (Nguyen and Tran, "WaNet – Imperceptible Warping-based
Backdoor Attack", ICLR 2021, arXiv 2102.10369).

The warping field is drawn once from the seed: ``k × k`` offsets uniform in [−1, 1] (two
components), divided by their mean absolute value, upsampled bicubically (``align_corners``) to
``H × W``, scaled by ``s / H`` and added to the identity sampling grid, which is then clamped to
[−1, 1] (grid units: −1 and 1 are the centres of the border pixels). The image is resampled on it
with ``grid_sample`` (bilinear, ``align_corners=True``), as the authors' code does. Defaults ``k = 4``,
``s = 0.5`` (``trigger.grid_k``, ``trigger.warp_strength``).

*Noise mode* (their defence against detection, on by default): beside the poisoned images, a share
of other training images (``trigger.noise_ratio`` per poisoned image, 2 in the paper) are warped
by the field plus a random per-pixel offset uniform in ``[−1, 1] / H`` and keep their own labels,
so that the network learns the exact field and not any warp. Departure from the paper: it redraws
the poisoned and noise images in every batch; perturbd poisons a fixed set once (seeded), as it
does for every trigger, so a poisoned set is an image folder that can be shipped and reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from perturbd.data.dataset import to_float01
from perturbd.errors import ConfigError
from perturbd.seeding import derived_generator
from perturbd.trigger_params import WanetParams
from perturbd.triggers.base import (
    Trigger,
    TriggerContext,
    register_trigger,
    transform_images,
    unpoisoned_sample,
)


def identity_grid(height: int, width: int) -> torch.Tensor:
    """``(H, W, 2)`` sampling grid that leaves an image as it is: ``(x, y)`` in [−1, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack((xs, ys), dim=-1)


def warp_field(height: int, width: int, k: int, strength: float, seed: int) -> torch.Tensor:
    """The WaNet sampling grid ``(H, W, 2)`` for control grid ``k`` and strength ``s`` (module docstring)."""
    if k > min(height, width):
        raise ConfigError(f"trigger.grid_k {k} does not fit {height}×{width} images; use grid_k ≤ {min(height, width)}")
    gen = derived_generator(seed, "wanet-field", "trigger")
    ins = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)[0]
    return (identity_grid(height, width) + strength * noise / height).clamp(-1, 1)


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Float images ``(N, C, H, W)`` in [0, 1] resampled on ``grid``: ``(H, W, 2)`` or ``(N, H, W, 2)``."""
    grid = grid.to(images.device, images.dtype)
    grid = grid.expand(len(images), *grid.shape[-3:]) if grid.ndim == 3 else grid
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@dataclass
class Warp(Trigger):
    """A fixed warp. ``delta`` holds the sampling grid as ``(2, H, W)`` (x then y, grid units
    [−1, 1]); ``noise_ratio`` is the noise mode's share, per poisoned image."""

    noise_ratio: float = 2.0
    family: ClassVar[str] = "warp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta.shape[0] != 2 or self.noise_ratio < 0:
            raise ConfigError(
                f"a warp trigger holds a (2, H, W) grid and noise_ratio ≥ 0, got {tuple(self.delta.shape)} and {self.noise_ratio}"
            )

    @property
    def grid(self) -> torch.Tensor:
        """``(H, W, 2)``, as ``grid_sample`` takes it."""
        return self.delta.permute(1, 2, 0)

    def params(self) -> dict[str, Any]:
        return {"noise_ratio": self.noise_ratio}

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return warp(images, self.grid)

    def noisy(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The noise mode: each image warped by the field plus its own offsets uniform in
        ``[−1, 1] / H`` (drawn from ``gen``), rounded as :meth:`apply` rounds; labels are the caller's."""
        height = self.grid.shape[0]
        offsets = (torch.rand(len(images), *self.grid.shape, generator=gen) * 2 - 1) / height
        grids = (self.grid + offsets).clamp(-1, 1)
        if not self.quantize and images.dtype == torch.uint8:
            images = to_float01(images)
        return transform_images(images, lambda x: warp(x, grids))

    def poison_extras(self, images: torch.Tensor, poisoned: torch.Tensor, seed: int) -> torch.Tensor:
        """The noise mode: :func:`noise_indices` of the set warped by :meth:`noisy` in place."""
        noise = noise_indices(len(images), poisoned, self.noise_ratio, seed)
        if len(noise):
            images[noise] = self.noisy(images[noise], derived_generator(seed, "noise-warps", "poison"))
        return noise


def noise_indices(size: int, indices: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """The noise mode's images: ``round(ratio × len(indices))`` of the images not poisoned (any
    class), seeded, sorted; as many as there are when fewer are left."""
    return unpoisoned_sample(size, indices, round(ratio * len(indices)), seed, "noise-images")


@register_trigger("wanet", family=Warp)
def wanet(cfg: WanetParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    grid = warp_field(h, w, cfg.grid_k, cfg.warp_strength, ctx.seed)
    info = {"grid_k": cfg.grid_k, "warp_strength": cfg.warp_strength, "noise_ratio": cfg.noise_ratio, "seed": ctx.seed}
    return Warp(grid.permute(2, 0, 1).contiguous(), "wanet", info, noise_ratio=cfg.noise_ratio)
