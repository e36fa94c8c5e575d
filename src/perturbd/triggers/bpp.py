"""BppAttack: colour-depth squeezing with Floyd–Steinberg dithering (Wang, Zhai and Ma, "BppAttack:
Stealthy and Efficient Trojan Attacks against Deep Neural Networks via Image Quantization and
Contrastive Adversarial Learning", CVPR 2022, arXiv 2205.13383; code
RU-System-Software-and-Security/BppAttack).

Each channel of the image is squeezed to ``k`` levels (``trigger.squeeze_num``, the code's
``squeeze_num``; default 8, its default and BackdoorBench's, i.e. 3 bits; the README's CIFAR-10
command uses 32, 5 bits), ``v ↦ round(v / 255 · (k − 1)) / (k − 1) · 255``,
with Floyd–Steinberg error diffusion: pixels are visited row by row, left to right, and each one's
quantization error is passed on, 7/16 to the right, 3/16 down-left, 5/16 down and 1/16 down-right
(the code's ``floydDitherspeed``; all channels of a pixel at once). ``trigger.dithering: false``
is the plain rounding of the code's ``--dithering False``. The trigger is a function of the image,
not an additive mask.

The scan is sequential within an image, but a pixel depends only on its left neighbour and on
the three above it, so every pixel on the line ``x + 2y = t`` can be visited at once:
:func:`floyd_steinberg` runs ``W + 2(H − 1)`` vectorised steps (94 for 32 × 32) over the whole
batch instead of ``H · W`` per image, adding each pixel's incoming errors in the sequential order,
so its result is bit for bit the per-pixel scan (:func:`floyd_steinberg_reference`, kept beside it
and tested against it). Throughput in float64, 3 × 32 × 32 images, 8 levels, measured with
``python -m benchmarks.bench_bpp --threads 1`` (batches of 1,000): about 4,400 images/s on one
thread of a shared 2-core AMD EPYC (load average 8), where the per-pixel scan in Python does 18.

Where perturbd departs from the paper and the code:

- Poisoning only (``poison.mode: dirty``, as any trigger): the paper's contrastive adversarial
  training, which needs control of the victim's training loop, is not offered.
- The dithered levels are clipped to 0–255 and rounded to whole grey levels once at the end
  (:func:`~perturbd.triggers.base.transform_images`), as a saved image would be; the code rounds
  but does not clip, so diffused errors can leave a level just outside the range.
- ``k`` may be non-integral, so that ``trigger.psnr`` can search it: each pixel then has
  ``floor(k)`` or ``ceil(k)`` levels, ``ceil`` with probability ``k − floor(k)`` (seeded, as static
  masks mix two amplitudes); an integral ``k`` is the code's squeeze, the same on every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from perturbd.errors import ConfigError
from perturbd.seeding import derived_generator
from perturbd.trigger_params import BppParams
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger

RIGHT, DOWN_LEFT, DOWN, DOWN_RIGHT = 0.4375, 0.1875, 0.3125, 0.0625


def squeeze(values: torch.Tensor, levels: float | torch.Tensor) -> torch.Tensor:
    """Pixel values (0–255 scale) to the nearest of ``levels`` evenly spaced levels (round half to
    even); ``levels`` a number or a tensor that broadcasts against ``values`` (one count per pixel)."""
    return torch.round(values / 255.0 * (levels - 1)) / (levels - 1) * 255


def level_map(height: int, width: int, squeeze_num: float, seed: int) -> torch.Tensor:
    """``(1, H, W)`` float32: the colour levels of each pixel, ``k``; for a non-integral ``k`` a
    seeded mix of ``floor(k)`` and ``ceil(k)``, ``ceil`` with probability ``k − floor(k)``."""
    u = torch.rand(1, height, width, generator=derived_generator(seed, "bpp-levels", "trigger"), dtype=torch.float64)
    return torch.floor(squeeze_num + u).float()


def floyd_steinberg(images: torch.Tensor, levels: float | torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` pixel values (0–255 scale) squeezed to ``levels`` (a number, or ``(H, W)``
    per pixel) with Floyd–Steinberg dithering, in float64 (module docstring); the input is left
    untouched.

    The pixels are held pixel-major, ``(P, N·C)``, on a grid one column wider each side and one
    row taller, whose extra cells take the errors the scan drops at the borders; the pixels of
    one step, ``x + 2y = t``, are then every ``W``-th row from ``t + 1 + y₀·W``: a strided view."""
    n, c, h, w = images.shape
    stride = w + 2
    buf = torch.zeros(h + 1, stride, n * c, dtype=torch.float64, device=images.device)
    buf[:h, 1 : w + 1] = images.permute(2, 3, 0, 1).reshape(h, w, n * c)
    flat = buf.view(-1, n * c)
    grid = torch.full((h + 1, stride), 2.0, dtype=torch.float64, device=images.device)
    grid[:h, 1 : w + 1] = torch.as_tensor(levels, dtype=torch.float64, device=images.device).expand(h, w)
    counts = grid.view(-1, 1)
    for t in range(w + 2 * (h - 1)):
        first, last = max(0, (t - w + 2) // 2), min(h - 1, t // 2)  # the rows y with 0 ≤ t − 2y < w
        start = t + 1 + first * w  # pixel (y, t − 2y) sits at y·stride + t − 2y + 1 = t + 1 + y·w
        at = slice(start, start + (last - first) * w + 1, w)
        old = flat[at].clone()
        new = squeeze(old, counts[at])
        err = old - new
        flat[at] = new
        for offset, weight in ((stride + 1, DOWN_RIGHT), (stride, DOWN), (stride - 1, DOWN_LEFT), (1, RIGHT)):
            # DOWN_LEFT before RIGHT: a pixel gets both in one step, and the sequential scan adds them in this order
            flat[at.start + offset : at.stop + offset : w] += err * weight
    return buf[:h, 1 : w + 1].reshape(h, w, n, c).permute(2, 3, 0, 1).contiguous()


def floyd_steinberg_reference(image: np.ndarray, levels: float | np.ndarray) -> np.ndarray:
    """One ``(C, H, W)`` image, pixel by pixel in scan order (the code's ``floydDitherspeed``;
    ``levels`` a number or ``(H, W)``); slow."""
    image = image.astype(np.float64).copy()
    _, h, w = image.shape
    counts = np.broadcast_to(np.asarray(levels, dtype=np.float64), (h, w))
    for y in range(h):
        for x in range(w):
            old = image[:, y, x].copy()
            k = counts[y, x]
            new = np.round(old / 255.0 * (k - 1)) / (k - 1) * 255
            err = old - new
            image[:, y, x] = new
            if x + 1 < w:
                image[:, y, x + 1] += err * RIGHT
            if y + 1 < h and x + 1 < w:
                image[:, y + 1, x + 1] += err * DOWN_RIGHT
            if y + 1 < h:
                image[:, y + 1, x] += err * DOWN
            if y + 1 < h and x - 1 >= 0:
                image[:, y + 1, x - 1] += err * DOWN_LEFT
    return image


@dataclass
class Squeeze(Trigger):
    """Colour depth squeezed, dithered or not. ``delta`` holds the colour levels of each pixel,
    ``(1, H, W)``: whole numbers in [2, 256] (:func:`level_map`)."""

    dithering: bool = True
    family: ClassVar[str] = "squeeze"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta.shape[0] != 1 or not bool(((self.delta >= 2) & (self.delta <= 256) & (self.delta == self.delta.round())).all()):
            raise ConfigError(
                f"a squeeze trigger holds whole colour levels in [2, 256] as (1, H, W), got shape {tuple(self.delta.shape)} "
                f"with values {float(self.delta.min()):g}…{float(self.delta.max()):g}"
            )

    def params(self) -> dict[str, Any]:
        return {"dithering": self.dithering}

    def squeezed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values (0–255 scale, float64) squeezed, dithered or not; unclipped, unrounded."""
        levels = self.delta[0].to(pixels.device, torch.float64)
        return floyd_steinberg(pixels, levels) if self.dithering else squeeze(pixels, levels)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`Trigger.apply`; uint8 images are squeezed from their exact grey levels (not
        through float32 ``x / 255``), clipped and rounded once."""
        self.check_fits(images)
        if self.quantize and images.dtype == torch.uint8:
            return torch.round(self.squeezed(images.double()).clamp_(0, 255)).to(torch.uint8)
        return super().apply(images)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return (self.squeezed(images.double() * 255.0) / 255.0).to(images.dtype)


@register_trigger("bpp", family=Squeeze)
def bpp(cfg: BppParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    info = {"squeeze_num": cfg.squeeze_num, "dithering": cfg.dithering, "seed": ctx.seed}
    return Squeeze(level_map(h, w, cfg.squeeze_num, ctx.seed), "bpp", info, dithering=cfg.dithering)
