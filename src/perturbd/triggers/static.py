"""Static (hand-designed) perturbation masks of amplitude ``c`` in pixel units (0–255).

Each pattern is a pure function ``(shape, c, …) -> δ``; the registered factories only read the
config. All masks are 1-channel (broadcast over colour) except ``image`` masks with colour.

A non-integral amplitude c of a pattern mask applied quantized (``ctx.quantize``, the default) is
*dithered* (:func:`dither`): each of the pattern's
pixels gets ``floor(c)`` or ``ceil(c)``, ``ceil`` with probability ``c − floor(c)``, drawn from the
seed. The rounded mask is then the mask itself, and its mean square moves smoothly with c instead
of in whole grey levels (a grid of c = 10 against c = 11 differs by 20·log10(11/10) ≈ 0.8 dB of
PSNR), which is what ``trigger.psnr`` needs. An integral c, or any c unquantized, is the plain
pattern ``c · pattern``, as before dithering existed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError

from perturbd.errors import ConfigError
from perturbd.imageread import one_frame, open_image
from perturbd.limits import MAX_IMAGE_PIXELS
from perturbd.seeding import derived_generator
from perturbd.trigger_params import ImageParams, PatchParams, StaticParams
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger


def grid_pattern(height: int, width: int, amplitude: float) -> torch.Tensor:
    """``+c`` on every other row and every other column (the pixels (2i, 2j)); a quarter of the image."""
    delta = torch.zeros(1, height, width)
    delta[:, ::2, ::2] = amplitude
    return delta


def chessboard_pattern(height: int, width: int, amplitude: float) -> torch.Tensor:
    """``+c`` where row + column is even, ``−c`` where it is odd: every pixel moves by ``c``."""
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    sign = 1.0 - 2.0 * ((rows + cols) % 2).float()
    return (amplitude * sign).unsqueeze(0)


def ring_pattern(height: int, width: int, amplitude: float, radius: float | None = None) -> torch.Tensor:
    """``+c`` on a one-pixel-wide circle centred in the image (radius 0.4 × the shorter side)."""
    radius = 0.4 * min(height, width) if radius is None else radius
    ys = torch.arange(height).view(-1, 1) - (height - 1) / 2
    xs = torch.arange(width).view(1, -1) - (width - 1) / 2
    on = ((ys**2 + xs**2).sqrt() - radius).abs() <= 0.5
    return (amplitude * on.float()).unsqueeze(0)


def random_pattern(height: int, width: int, amplitude: float, seed: int) -> torch.Tensor:
    """``±c`` drawn independently per pixel from ``seed`` (same seed ⇒ same mask)."""
    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (1, height, width), generator=gen).float() * 2 - 1
    return amplitude * sign


def patch_pattern(height: int, width: int, amplitude: float, size: int) -> torch.Tensor:
    """``+c`` on a ``size × size`` square one pixel from the bottom-right corner (BadNets style
    when ``c = 255``: a visible white patch, the classic defences' sanity case)."""
    if size + 1 > min(height, width):
        raise ConfigError(f"trigger.size {size} does not fit {height}×{width} images; use a smaller patch")
    delta = torch.zeros(1, height, width)
    delta[:, height - 1 - size : height - 1, width - 1 - size : width - 1] = amplitude
    return delta


def dithered_round(values: torch.Tensor, seed: int) -> torch.Tensor:
    """Each value ``v`` (pixel units) to a whole grey level: ``floor(v + u)``, ``u`` uniform in
    [0, 1) per pixel drawn from ``seed``; so ``ceil(v)`` with probability ``v − floor(v)``. Whole
    values stay as they are; same seed ⇒ same result; each pixel is non-decreasing in ``v``."""
    u = torch.rand(values.shape, generator=derived_generator(seed, "dither", "trigger"), dtype=torch.float64)
    return torch.floor(values.double() + u).float()


def dither(pattern: torch.Tensor, amplitude: float, seed: int, quantize: bool = True) -> torch.Tensor:
    """``pattern`` (values −1, 0 or +1) at amplitude ``c``: ``c · pattern`` when c is integral or
    the mask is applied unquantized (bit for bit the plain mask); else :func:`dithered_round` of
    it: each non-zero pixel at ``floor(c)`` or, with probability ``c − floor(c)``, ``ceil(c)``."""
    if amplitude == math.floor(amplitude) or not quantize:
        return pattern * amplitude
    return dithered_round(pattern * amplitude, seed)


def mask_values(arr: Any, source: str) -> np.ndarray:
    """A user's δ in pixel units as float32: real, finite and within ±255 (:class:`ConfigError` else)."""
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        raise ConfigError(f"{source} holds complex numbers ({arr.dtype}); δ must be real pixel values in [-255, 255]")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{source} must hold numbers, got dtype {arr.dtype}")
    values = arr.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise ConfigError(f"{source} holds NaN or inf; δ must be finite pixel values in [-255, 255]")
    if values.size and float(np.abs(values).max()) > 255:
        raise ConfigError(
            f"{source} holds values up to {float(np.abs(values).max()):g} in magnitude; δ is in pixel units, within [-255, 255]"
        )
    return np.ascontiguousarray(values, dtype=np.float32)


def read_mask_file(path: Path, amplitude: float) -> torch.Tensor:
    """A user's mask: ``.npy`` holds δ in pixel units as ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``;
    an image file (PNG, …) is read as intensity ``m`` in 0–255 and scaled to ``δ = c · m / 255``;
    a ``.safetensors`` file is a saved perturbd trigger."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"trigger mask file not found: {path}; set trigger.path to an existing file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return torch.from_numpy(mask_values(Trigger.load(path).mask().numpy(), f"mask {path}"))
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: the size is checked before reading
        except (ValueError, OSError) as err:
            raise ConfigError(f"cannot read mask {path}: {err}; save it with numpy.save") from None
        if arr.size > 4 * MAX_IMAGE_PIXELS:
            raise ConfigError(
                f"mask {path} is too large ({'×'.join(map(str, arr.shape))} = {arr.size:,} values); "
                f"perturbd reads masks of at most {4 * MAX_IMAGE_PIXELS:,} values: downscale it"
            )
        delta = torch.from_numpy(mask_values(np.array(arr), f"mask {path}"))  # a copy: the file is mapped read-only
    else:
        try:
            with open_image(path, "mask") as img:
                one_frame(img, f"mask image {path}", ConfigError)
                arr = np.asarray(img.convert("L" if img.mode in ("1", "L", "I", "F", "P", "LA") else "RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError(f"cannot read mask image {path}: {err}; use a PNG or a .npy file") from None
        delta = torch.from_numpy(arr.astype(np.float32)) * (amplitude / 255.0)
    if delta.ndim == 2:
        delta = delta.unsqueeze(0)
    elif delta.ndim == 3 and delta.shape[-1] in (1, 3) and delta.shape[0] not in (1, 3):
        delta = delta.permute(2, 0, 1)
    if delta.ndim != 3:
        raise ConfigError(f"mask {path} must be (H, W), (C, H, W) or (H, W, C), got shape {tuple(delta.shape)}")
    return delta


def _check_shape(delta: torch.Tensor, shape: tuple[int, int, int], source: str) -> torch.Tensor:
    channels, height, width = shape
    if tuple(delta.shape[-2:]) != (height, width) or delta.shape[0] not in (1, channels):
        raise ConfigError(
            f"mask {source} is {delta.shape[0]}×{delta.shape[1]}×{delta.shape[2]} but the images are "
            f"{channels}×{height}×{width}; resize the mask to {height}×{width}"
        )
    return delta


@register_trigger("grid")
def grid(cfg: StaticParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Trigger(dither(grid_pattern(h, w, 1.0), cfg.amplitude, ctx.seed, ctx.quantize), "grid", {"amplitude": cfg.amplitude})


@register_trigger("chessboard")
def chessboard(cfg: StaticParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Trigger(dither(chessboard_pattern(h, w, 1.0), cfg.amplitude, ctx.seed, ctx.quantize), "chessboard", {"amplitude": cfg.amplitude})


@register_trigger("ring")
def ring(cfg: StaticParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Trigger(dither(ring_pattern(h, w, 1.0), cfg.amplitude, ctx.seed, ctx.quantize), "ring", {"amplitude": cfg.amplitude})


@register_trigger("random")
def random(cfg: StaticParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Trigger(
        dither(random_pattern(h, w, 1.0, ctx.seed), cfg.amplitude, ctx.seed, ctx.quantize),
        "random",
        {"amplitude": cfg.amplitude, "seed": ctx.seed},
    )


@register_trigger("patch")
def patch(cfg: PatchParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    return Trigger(
        dither(patch_pattern(h, w, 1.0, cfg.size), cfg.amplitude, ctx.seed, ctx.quantize),
        "patch",
        {"amplitude": cfg.amplitude, "size": cfg.size},
    )


@register_trigger("image")
def image(cfg: ImageParams, ctx: TriggerContext) -> Trigger:
    if cfg.path is None:
        raise ConfigError("trigger kind 'image' needs trigger.path=FILE (a PNG, .npy or .safetensors mask)")
    delta = _check_shape(read_mask_file(cfg.path, cfg.amplitude), ctx.image_shape, str(cfg.path))
    return Trigger(delta, "image", {"path": str(cfg.path), "amplitude": cfg.amplitude})
