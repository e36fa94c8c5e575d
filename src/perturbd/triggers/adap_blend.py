"""Adap-Blend: a blend trigger cut into patches, a random part of them in each poisoned image, with
cover images kept at their labels (Qi, Xie, Li, Wang, Mittal, "Revisiting the Assumption of Latent
Separability for Backdoor Defenses", ICLR 2023; code vtu81/backdoor-toolbox,
``poison_tool_box/adaptive_blend.py``).

The blend pattern ``p`` is cut into ``pieces`` patches on a ``√pieces × √pieces`` grid (16, a
4 × 4 grid); each poisoned training image is blended with ``p`` only on a random subset of them,
``round(mask_rate · pieces)`` patches left out (half), drawn afresh per image:
``x' = x + α · M ⊙ (p − x)`` with ``α = 0.15`` (``trigger.alpha``). *Conservatism*: a further
``round(cover_rate · N)`` training images (any class, none of them poisoned; ``cover_rate``
0.003, as the paper's CIFAR-10 runs with 0.003 poisoned) get the same random-patch blend and keep
their own labels (the trigger's :meth:`~AdaptiveBlend.poison_extras`; in a run's
``poison_indices.json`` as ``noise_indices``), so that the network ties the target to the whole
pattern, not to a few patches, and poisoned images stay close to clean ones in its latent space.
At test time the *whole* pattern is blended with a stronger ``test_alpha`` (the paper's 0.2): by
default ``α · 4/3``, so that a ``trigger.psnr`` search keeps the paper's ratio; both weights are
in the trigger's ``info`` and its label (``adap_blend α=0.15 test α=0.2``).

``trigger.psnr`` and ``trigger.ssim`` measure the images a poisoned set holds (half the patches
at α), not the test-time form, which is more visible.

Where perturbd departs from the paper and the code:

- The default pattern is seeded uniform noise (as ``blended``); the paper blends a Hello Kitty
  image, which perturbd does not ship: give any key image with ``trigger.path``.
- Poisoned images are drawn from classes other than the target (as for every trigger); the code
  draws them from every class.
- Pixel row ``i`` lies in patch row ``⌊i · √pieces / H⌋`` (columns alike), so any image size
  works; the code requires the side to be a multiple of ``√pieces`` (where both agree). Counts
  are rounded where the code truncates (``int``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from perturbd.data.dataset import to_float01
from perturbd.errors import ConfigError
from perturbd.seeding import derived_generator
from perturbd.trigger_params import AdapBlendParams
from perturbd.triggers.base import (
    Trigger,
    TriggerContext,
    register_trigger,
    transform_images,
    unpoisoned_sample,
)
from perturbd.triggers.blended import noise_pattern, read_pattern


def piece_map(height: int, width: int, pieces: int) -> torch.Tensor:
    """``(H, W)`` int64: the patch of each pixel, ``row · √pieces + column`` of the patch grid."""
    side = round(pieces**0.5)
    if side * side != pieces or pieces < 1:
        raise ConfigError(f"adap_blend pieces must be a square number (4, 9, 16, …), got {pieces}")
    if side > min(height, width):
        raise ConfigError(
            f"trigger.pieces {pieces} ({side}×{side} patches) does not fit {height}×{width} images; "
            f"use at most {min(height, width) ** 2} pieces"
        )
    rows: torch.Tensor = torch.arange(height) * side // height
    cols: torch.Tensor = torch.arange(width) * side // width
    pieces_of: torch.Tensor = rows[:, None] * side + cols[None]
    return pieces_of


@dataclass
class AdaptiveBlend(Trigger):
    """Adap-Blend. ``delta`` holds the pattern ``p`` (as :class:`~perturbd.triggers.blended.Blend`);
    :meth:`apply` is the test-time form ``(1 − test_alpha)·x + test_alpha·p``,
    :meth:`poison_copies` the training form (random patches at ``train_alpha``)."""

    train_alpha: float = 0.15
    test_alpha: float = 0.2
    pieces: int = 16
    mask_rate: float = 0.5
    cover_rate: float = 0.003
    pieces_of: torch.Tensor = field(init=False, repr=False)  # (H, W): the patch of each pixel
    family: ClassVar[str] = "adapblend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.train_alpha < 1 and 0 < self.test_alpha <= 1 and 0 <= self.mask_rate < 1 and 0 <= self.cover_rate < 1):
            raise ConfigError(
                f"adap_blend needs train_alpha in (0, 1), test_alpha in (0, 1], mask_rate and cover_rate in [0, 1); "
                f"got {self.train_alpha}, {self.test_alpha}, {self.mask_rate}, {self.cover_rate}"
            )
        self.pieces_of = piece_map(self.delta.shape[-2], self.delta.shape[-1], self.pieces)

    def params(self) -> dict[str, Any]:
        return {
            "train_alpha": self.train_alpha,
            "test_alpha": self.test_alpha,
            "pieces": self.pieces,
            "mask_rate": self.mask_rate,
            "cover_rate": self.cover_rate,
        }

    @property
    def left_out(self) -> int:
        """Patches left out of each training image: ``round(mask_rate · pieces)``."""
        return round(self.mask_rate * self.pieces)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        p = self.delta.to(images.device, images.dtype) / 255.0
        return (1.0 - self.test_alpha) * images + self.test_alpha * p

    def masks(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``(count, 1, H, W)`` float32: 1 on the patches each training copy blends, 0 on the
        :attr:`left_out` ones, drawn from ``gen``."""
        order = torch.rand(count, self.pieces, generator=gen).argsort(dim=1)
        keep = torch.ones(count, self.pieces).scatter_(1, order[:, : self.left_out], 0.0)
        return keep[:, self.pieces_of].unsqueeze(1)

    def blended(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The training form of ``images`` (uint8 or float, as :meth:`apply` takes them), masks from ``gen``."""
        self.check_fits(images)
        if not self.quantize and images.dtype == torch.uint8:
            images = to_float01(images)
        masks = self.masks(len(images), gen).to(images.device)

        def blend(x: torch.Tensor) -> torch.Tensor:
            p = self.delta.to(x.device, x.dtype) / 255.0
            return x + self.train_alpha * masks.to(x.dtype) * (p - x)

        return transform_images(images, blend)

    def poison_copies(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        return self.blended(images, derived_generator(seed, "adap-blend-poison", "poison"))

    def poison_extras(self, images: torch.Tensor, poisoned: torch.Tensor, seed: int) -> torch.Tensor:
        """The cover images: ``round(cover_rate · N)`` images not poisoned (any class), seeded,
        given the training form in place; their labels stay."""
        cover = unpoisoned_sample(len(images), poisoned, round(self.cover_rate * len(images)), seed, "cover-images")
        if len(cover):
            images[cover] = self.blended(images[cover], derived_generator(seed, "adap-blend-cover", "poison"))
        return cover


@register_trigger("adap_blend", family=AdaptiveBlend)
def adap_blend(cfg: AdapBlendParams, ctx: TriggerContext) -> Trigger:
    pattern = noise_pattern(ctx.image_shape, ctx.seed) if cfg.path is None else read_pattern(cfg.path, ctx.image_shape)
    info: dict[str, Any] = {
        "alpha": cfg.alpha,
        "test_alpha": cfg.test_weight,
        "pieces": cfg.pieces,
        "mask_rate": cfg.mask_rate,
        "cover_rate": cfg.cover_rate,
        "pattern": str(cfg.path) if cfg.path else "noise",
        "seed": ctx.seed,
    }
    return AdaptiveBlend(
        pattern.contiguous(),
        "adap_blend",
        info,
        train_alpha=cfg.alpha,
        test_alpha=cfg.test_weight,
        pieces=cfg.pieces,
        mask_rate=cfg.mask_rate,
        cover_rate=cfg.cover_rate,
    )
