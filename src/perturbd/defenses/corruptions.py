"""The fifteen ImageNet-C corruptions TeCo applies (Hendrycks & Dietterich, ICLR 2019), batched in
torch on the images' device: :data:`CORRUPTIONS` maps each name to ``fn(x, severity, gen)``,
``x`` float ``(N, C, H, W)`` in [0, 1] with C = 1 or 3, ``severity`` 1–5, random draws from the
CPU generator ``gen`` (so a seed gives the same corruptions on every device); the result is float
in [0, 1]. :func:`corrupt` applies one and truncates to 8 bits as the package does.

TeCo's authors call the ``imagecorruptions`` package (bethgelab, 1.1.2, per image on the CPU in
numpy, OpenCV and scikit-image). We do not depend on it: its ``gaussian_blur`` and ``glass_blur``
pass ``multichannel=True`` to ``skimage.filters.gaussian``, which scikit-image 0.19 deprecated
and later removed (a TypeError with the version perturbd is tested with); it refuses images under
32 × 32 pixels (MNIST is 28 × 28); it works on one image at a time. So the corruptions are ours,
with the package's severity constants (``c`` tables below) and its arithmetic, and these
differences:

- **every corruption, all fifteen**: gaussian_noise, shot_noise, impulse_noise, defocus_blur,
  glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast, elastic_transform,
  pixelate, jpeg_compression (the package's "common" set, TeCo's list);
- **grey images stay grey**: the package stacks a grey image to RGB and returns RGB; we corrupt the
  one channel (snow and brightness use the channel itself as the grey level; jpeg_compression
  encodes a greyscale JPEG, the package an RGB one of three equal channels: the same luma);
- **frost**: the package blends one of six frost photographs shipped with it; we ship no
  photographs and blend a seeded plasma fractal with no decay (``wibbledecay = 1``: detail at every
  scale, fog's generator otherwise) with the package's weights;
- **glass_blur**: the package truncates the first blur to uint8 (kept), blurs with scikit-image's
  Gaussian (``mode="nearest"``, truncated at 4 σ: kept) and swaps pixels in a sequential scan
  (kept, batched over images: each image draws its own offsets);
- **elastic_transform**: bilinear sampling with half-sample-symmetric borders, as
  ``map_coordinates(order=1, mode="reflect")`` within the image, approximated at the border;
- **pixelate**: PIL's BOX downscale (a pixel counts wholly when its centre falls in the box) and
  NEAREST upscale, written out; **motion_blur**: the package's own shifted-sum kernel (its 1.1
  replacement of ImageMagick's), angle drawn per image; **snow**: its layer is cropped to the
  image before its motion blur (the package crops after: only the right and bottom borders differ);
- random draws come from torch's generator, not numpy's: the same distributions, other numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _rand(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws on the CPU from ``gen``, moved to ``like``'s device as float32."""
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(like.device, torch.float32)


def _randn(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(like.device, torch.float32)


def _pad_index(n: int, p: int, mode: str, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``p`` each side: ``edge`` (repeat the border),
    ``reflect101`` (OpenCV's default, ``dcb|abcd|cba``) or ``symmetric`` (SciPy's ``reflect``,
    ``cba|abcd|dcb``), for any ``p`` (reflecting again past the far side)."""
    i = torch.arange(-p, n + p, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        period = 2 * (n - 1)
        i = i.remainder(period)
        return torch.where(i >= n, period - i, i)
    i = i.remainder(2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of ``x`` ``(N, C, H, W)`` with the 2-D ``kernel`` (odd sides), padded by ``mode``."""
    kh, kw = kernel.shape
    n, c, h, w = x.shape
    rows, cols = _pad_index(h, kh // 2, mode, x.device), _pad_index(w, kw // 2, mode, x.device)
    padded = x[:, :, rows][:, :, :, cols].reshape(n * c, 1, h + kh - 1, w + kw - 1)
    return F.conv2d(padded, kernel.to(x)[None, None]).view(n, c, h, w)


def _gauss1d(sigma: float, radius: int) -> torch.Tensor:
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    return k / k.sum()


def _gaussian(x: torch.Tensor, sigma: float, mode: str = "edge", truncate: float = 4.0) -> torch.Tensor:
    """scikit-image's ``gaussian`` (SciPy's filter: radius ``int(truncate·σ + 0.5)``), per channel."""
    k = _gauss1d(sigma, int(truncate * sigma + 0.5)).float()
    return _filter2d(_filter2d(x, k[None], mode), k[:, None], mode)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB → grey (0.299, 0.587, 0.114) as ``(N, 1, H, W)``; a grey image is itself."""
    if x.shape[1] == 1:
        return x
    return (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _zoom_matrix(size: int, factor: float, device: torch.device) -> torch.Tensor:
    """``(size, size)`` rows of linear interpolation: the package's ``clipped_zoom`` along one axis
    (central crop of ``ceil(size / factor)``, SciPy ``zoom(order=1)``, the first ``size`` outputs)."""
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    out = round(crop * factor)
    pos = torch.arange(size, dtype=torch.float64) * ((crop - 1) / (out - 1) if out > 1 else 0.0)
    lo = pos.floor().long().clamp(0, crop - 1)
    hi = (lo + 1).clamp(max=crop - 1)
    frac = pos - lo
    m = torch.zeros(size, size, dtype=torch.float64)
    m[torch.arange(size), top + lo] += 1 - frac
    m[torch.arange(size), top + hi] += frac
    return m.float().to(device)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre of ``x`` ``(N, C, H, W)`` by ``factor``, same size out."""
    rows, cols = _zoom_matrix(x.shape[-2], factor, x.device), _zoom_matrix(x.shape[-1], factor, x.device)
    return rows @ x @ cols.T


def _shift_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """The package's ``_motion_blur``: a Gaussian-weighted sum of copies shifted along each image's
    angle, borders repeated, taps that leave the image dropped (the package stops there)."""
    n, c, h, w = x.shape
    width = 2 * radius + 1
    weights = torch.tensor([math.exp(-(i**2) / (2 * sigma**2)) for i in range(width)], dtype=torch.float64)
    weights = (weights / weights.sum()).float()
    theta = torch.deg2rad(angle_deg.double())
    out = torch.zeros_like(x)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    for i in range(width):
        dy = (-torch.ceil(i * torch.sin(theta) - 0.5)).long().to(x.device)
        dx = (-torch.ceil(i * torch.cos(theta) - 0.5)).long().to(x.device)
        keep = ((dy.abs() < h) & (dx.abs() < w)).float().view(n, 1, 1, 1)
        r = (rows[None] - dy[:, None]).clamp(0, h - 1)  # (N, H)
        q = (cols[None] - dx[:, None]).clamp(0, w - 1)  # (N, W)
        shifted = x.gather(2, r[:, None, :, None].expand(n, c, h, w)).gather(3, q[:, None, None, :].expand(n, c, h, w))
        out += weights[i] * keep * shifted
    return out


def plasma_fractal(n: int, size: int, decay: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` diamond-square height maps ``(n, size, size)`` in [0, 1] (``size`` a power of two),
    the package's ``plasma_fractal`` batched."""
    m = torch.zeros(n, size, size, dtype=torch.float64)
    step, wibble = size, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * (torch.rand(a.shape, generator=gen, dtype=torch.float64) * 2 - 1) * wibble

    while step >= 2:
        half = step // 2
        corner = m[:, ::step, ::step]
        square = corner + corner.roll(-1, 1)
        m[:, half::step, half::step] = wibbled(square + square.roll(-1, 2))
        dr, ul = m[:, half::step, half::step], m[:, ::step, ::step]
        m[:, ::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, ::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    m -= m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------- the corruptions


def gaussian_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = [0.08, 0.12, 0.18, 0.26, 0.38][s - 1]
    return (x + c * _randn(tuple(x.shape), gen, x)).clamp(0, 1)


def shot_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = [60, 25, 12, 5, 3][s - 1]
    return (torch.poisson(x.double().cpu() * c, generator=gen).to(x) / c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """scikit-image's ``random_noise(mode="s&p")``: each value replaced with probability ``c``, by 0 or 1 alike."""
    c = [0.03, 0.06, 0.09, 0.17, 0.27][s - 1]
    hit, salt = _rand(tuple(x.shape), gen, x) < c, _rand(tuple(x.shape), gen, x) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def defocus_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][s - 1]
    half, k = (8, 3) if radius <= 8 else (radius, 5)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[None] ** 2 + grid[:, None] ** 2) <= radius**2).double()
    disk = (disk / disk.sum())[None, None]
    g = _gauss1d(alias, k // 2)  # OpenCV's GaussianBlur of the disk, ksize k × k
    kernel = _filter2d(_filter2d(disk, g[None], "reflect101"), g[:, None], "reflect101")[0, 0]
    return _filter2d(x, kernel.float(), "reflect101").clamp(0, 1)


def glass_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][s - 1]
    y = (_gaussian(x, sigma) * 255).floor() / 255  # np.uint8 of the first blur
    n, _, h, w = y.shape
    hs, ws = range(h - delta, delta, -1), range(w - delta, delta, -1)
    draws = torch.randint(-delta, delta, (iterations, len(hs), len(ws), 2, n), generator=gen).to(x.device)
    at = torch.arange(n, device=x.device)
    for it in range(iterations):
        for a, hh in enumerate(hs):
            for b, ww in enumerate(ws):
                dx, dy = draws[it, a, b]
                here, there = y[at, :, hh, ww].clone(), y[at, :, hh + dy, ww + dx].clone()
                y[at, :, hh, ww] = there
                y[at, :, hh + dy, ww + dx] = here
    return _gaussian(y, sigma).clamp(0, 1)


def motion_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][s - 1]
    angle = torch.rand(len(x), generator=gen, dtype=torch.float64) * 90 - 45
    return _shift_blur(x, radius, sigma, angle).clamp(0, 1)


def zoom_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    factors = [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)][s - 1]
    zooms = np.arange(*factors)  # numpy's arange, as the package: its float steps decide the last factor
    out = x.clone()
    for z in zooms:
        out += clipped_zoom(x, float(z))
    return (out / (len(zooms) + 1)).clamp(0, 1)


def snow(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    loc, scale, zoom, cut, radius, sigma, keep = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ][s - 1]  # fmt: skip
    n, _, h, w = x.shape
    layer = clipped_zoom(loc + scale * _randn((n, 1, h, w), gen, x), zoom)
    layer = torch.where(layer < cut, torch.zeros_like(layer), layer).clamp(0, 1)
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 90 - 135
    layer = (_shift_blur(layer, radius, sigma, angle) * 255).round() / 255
    base = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (base + layer + layer.flip(-1, -2)).clamp(0, 1)


def _next_pow2(v: int) -> int:
    return 1 if v == 0 else 2 ** (v - 1).bit_length()


def frost(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """The package's blend ``c0 · x + c1 · frost``; frost is a rough plasma fractal (see the module docstring)."""
    c0, c1 = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][s - 1]
    n, _, h, w = x.shape
    layer = plasma_fractal(n, _next_pow2(max(h, w)), 1.0, gen)[:, None, :h, :w].to(x)
    return (c0 * x + c1 * layer).clamp(0, 1)


def fog(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][s - 1]
    n, _, h, w = x.shape
    top = x.amax((1, 2, 3), keepdim=True)
    layer = plasma_fractal(n, _next_pow2(max(h, w, 3)), decay, gen)[:, None, :h, :w].to(x)
    return ((x + strength * layer) * top / (top + strength)).clamp(0, 1)


def brightness(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Grey: ``x + c``; colour: HSV value ``V + c`` with hue and saturation kept (RGB scaled by V'/V)."""
    c = [0.1, 0.2, 0.3, 0.4, 0.5][s - 1]
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    v = x.amax(1, keepdim=True)
    lifted = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * lifted / v.clamp_min(1e-12), lifted.expand_as(x)).clamp(0, 1)


def contrast(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = [0.4, 0.3, 0.2, 0.1, 0.05][s - 1]
    mean = x.mean((2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def elastic_transform(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    alpha = 250 * [0.05, 0.065, 0.085, 0.1, 0.12][s - 1]
    n, c, h, w = x.shape
    reach = h * 0.005
    ky, kx = _gauss1d(h * 0.01, int(3 * h * 0.01 + 0.5)).float(), _gauss1d(w * 0.01, int(3 * w * 0.01 + 0.5)).float()

    def field() -> torch.Tensor:
        raw = (_rand((n, 1, h, w), gen, x) * 2 - 1) * reach
        return _filter2d(_filter2d(raw, kx[None], "symmetric"), ky[:, None], "symmetric")[:, 0] * alpha

    dx, dy = field(), field()
    ys = torch.arange(h, device=x.device).view(1, h, 1) + dy
    xs = torch.arange(w, device=x.device).view(1, 1, w) + dx
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = (ys - y0)[:, None], (xs - x0)[:, None]
    flat = x.reshape(n, c, h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        r = _reflect(yy.long(), h)
        q = _reflect(xx.long(), w)
        return flat.gather(2, (r * w + q).view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return (top * (1 - fy) + bottom * fy).clamp(0, 1)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Integer indices reflected half-sample-symmetrically into ``[0, n)``."""
    i = i.remainder(2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _box_matrix(size: int, out: int, device: torch.device) -> torch.Tensor:
    """PIL's BOX downscale along one axis: output ``o`` averages the inputs whose centres lie in its box."""
    scale = size / out
    centre = (torch.arange(out, dtype=torch.float64) + 0.5) * scale
    pos = torch.arange(size, dtype=torch.float64) + 0.5
    d = pos[None] - centre[:, None]
    m = ((d > -scale / 2) & (d <= scale / 2)).double()
    return (m / m.sum(1, keepdim=True).clamp_min(1)).float().to(device)


def pixelate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][s - 1]
    h, w = x.shape[-2:]
    oh, ow = max(1, int(h * c)), max(1, int(w * c))
    small = (_box_matrix(h, oh, x.device) @ (x * 255) @ _box_matrix(w, ow, x.device).T).round() / 255  # PIL keeps 8 bits
    rows = ((torch.arange(h, device=x.device) + 0.5) * oh / h).long().clamp(max=oh - 1)
    cols = ((torch.arange(w, device=x.device) + 0.5) * ow / w).long().clamp(max=ow - 1)
    return small[:, :, rows][:, :, :, cols]


def jpeg_compression(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    quality = [25, 18, 15, 10, 7][s - 1]
    pixels = [img for img in (x * 255).round().to(torch.uint8).cpu()]
    decoded = decode_jpeg(encode_jpeg(pixels, quality=quality), mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).to(x.device, x.dtype) / 255


CORRUPTIONS: dict[str, Corruption] = {
    f.__name__: f
    for f in (
        gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
        brightness, contrast, elastic_transform, pixelate, jpeg_compression,
    )
}  # fmt: skip
"""TeCo's fifteen corruptions, in its order (the package's "common" set)."""


def corrupt(x: torch.Tensor, name: str, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Corruption ``name`` at ``severity`` of float images ``x`` in [0, 1], truncated to 8 bits
    (the package's ``np.uint8`` of its float result; a value within 1e-3 below a level, float32's
    error on an exact level such as an unchanged pixel, counts as that level) and returned as
    float in [0, 1]."""
    return (CORRUPTIONS[name](x, severity, gen) * 255 + 1e-3).floor_().div_(255)
