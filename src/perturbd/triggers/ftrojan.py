"""FTrojan: a trigger in the frequency domain of the colour channels (Wang, Zhai, Ma, Liu, Zhang,
"An Invisible Black-box Backdoor Attack through Frequency Domain", ECCV 2022, arXiv 2111.10991;
code SoftWiser-group/FTrojan).

The image is converted from RGB to YUV, each channel cut into ``window × window`` blocks (32, the
paper's) and each block transformed by the orthonormal 2-D DCT-II (OpenCV's ``cv2.dct``, as the
authors use); a fixed ``magnitude`` m (``trigger.magnitude``) is added to the coefficients at the
paper's mid and high frequencies, ``(w/2 − 1, w/2 − 1)`` and ``(w − 1, w − 1)`` (``(15, 15)`` and
``(31, 31)`` for ``w = 32``), in the U and V channels of every block; then the inverse DCT and
YUV → RGB. Every step is linear, so the change to the RGB image is one fixed δ, the same for every
image: FTrojan is an *additive* mask, held and applied as one (``x' = clip(x + δ)``). The
coefficient moves by exactly m before clipping and rounding.

Grey images: the trigger goes into the single channel (their Y channel; there is no U or V).

Where perturbd departs from the authors' code (``data.py``, ``image.py``):

- YUV is OpenCV's YCrCb (BT.601 full range), as the code's ``cv2.COLOR_RGB2YCrCb``; the channels
  converted back with the exact inverse matrix, in float. The code casts to uint8 after each
  conversion (truncating, and wrapping negative values of the inverse DCT around 256); perturbd
  rounds once, at the end.
- Quantized (``poison.quantize``, the default) δ is realised in whole grey levels by seeded
  dithering (:func:`~perturbd.triggers.static.dithered_round`, as ``sig``): each pixel ``floor``
  or ``ceil`` of δ, so the coefficient moves by m on average and the visibility search moves
  smoothly; the code's truncation biases it.
- A block side longer than the image's is cut to it (MNIST's 28 × 28 with the default: one
  block, frequencies (13, 13) and (27, 27); in general ``(h/2 − 1, w/2 − 1)`` and
  ``(h − 1, w − 1)`` of an ``h × w`` block); a window that does not divide a larger image's
  side is an error, where the code would index past the last partial block.
- ``m = 20`` is the authors' ``train.py`` default for CIFAR-10 (their PyTorch script and
  BackdoorBench use 50; the paper studies several).
"""

from __future__ import annotations

import math

import torch

from perturbd.errors import ConfigError
from perturbd.trigger_params import FtrojanParams
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger
from perturbd.triggers.static import dithered_round

# RGB -> YCrCb (BT.601, full range; the offsets of 128 cancel in a difference)
YCRCB = torch.tensor(
    [[0.299, 0.587, 0.114], [0.5, -0.418688, -0.081312], [-0.168736, -0.331264, 0.5]],
    dtype=torch.float64,
)


def dct_matrix(n: int) -> torch.Tensor:
    """``(n, n)`` orthonormal DCT-II matrix ``D`` (``cv2.dct``'s): coefficients ``D x Dᵀ``, inverse ``Dᵀ X D``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def block_size(height: int, width: int, window: int) -> tuple[int, int]:
    """The blocks used on ``height × width`` images: ``window × window``, each side cut to the
    image's where the image is smaller; a :class:`ConfigError` when they do not tile the image."""
    bh, bw = min(window, height), min(window, width)
    if height % bh or width % bw:
        raise ConfigError(
            f"trigger.window {window} does not divide {height}×{width} images into blocks; "
            f"use a window that divides both sides (e.g. {math.gcd(height, width)})"
        )
    return bh, bw


def frequency_pattern(height: int, width: int, window: int, magnitude: float) -> torch.Tensor:
    """``(H, W)`` float64: the spatial change of one channel when ``magnitude`` is added to the
    mid and high DCT coefficients of every block (module docstring)."""
    bh, bw = block_size(height, width, window)
    coeffs = torch.zeros(bh, bw, dtype=torch.float64)
    coeffs[bh // 2 - 1, bw // 2 - 1] += magnitude
    coeffs[bh - 1, bw - 1] += magnitude
    block = dct_matrix(bh).T @ coeffs @ dct_matrix(bw)
    return block.repeat(height // bh, width // bw)


def ftrojan_delta(shape: tuple[int, int, int], window: int, magnitude: float) -> torch.Tensor:
    """δ ``(C, H, W)`` float64 in pixel units: the pattern in U and V mapped back to RGB, or in the
    one channel of grey images."""
    channels, height, width = shape
    pattern = frequency_pattern(height, width, window, magnitude)
    if channels == 1:
        return pattern[None]
    if channels != 3:
        raise ConfigError(f"ftrojan needs grey or RGB images, got {channels} channels")
    to_rgb: torch.Tensor = torch.linalg.inv(YCRCB)
    return (to_rgb[:, 1] + to_rgb[:, 2])[:, None, None] * pattern  # the same change in U and V


@register_trigger("ftrojan")
def ftrojan(cfg: FtrojanParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    delta = ftrojan_delta(ctx.image_shape, cfg.window, cfg.magnitude)
    info = {"magnitude": cfg.magnitude, "block": list(block_size(h, w, cfg.window)), "seed": ctx.seed}
    return Trigger(dithered_round(delta, ctx.seed) if ctx.quantize else delta.float(), "ftrojan", info)
