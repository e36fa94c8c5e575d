"""Batched augmentation on the training device: one random draw per batch, no per-image Python.

Inputs are float ``(N, C, H, W)``; randomness comes from an explicit ``torch.Generator`` so a run is
reproducible from its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _draw(shape: tuple[int, ...], high: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen, device=gen.device).to(device)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator, mode: str = "constant") -> torch.Tensor:
    """Pad by ``pad`` pixels (zeros, or ``mode="reflect"``: mirrored) and crop back at a random
    offset per image (a random translation)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = _draw((n, 1), 2 * pad + 1, gen, x.device)
    dx = _draw((n, 1), 2 * pad + 1, gen, x.device)
    rows = (torch.arange(h, device=x.device) + dy)[:, None, :, None]
    cols = (torch.arange(w, device=x.device) + dx)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left–right with probability 1/2."""
    flip = _draw((x.shape[0],), 2, gen, x.device).bool()
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def alternating_flips(n: int, gen: torch.Generator) -> torch.Tensor:
    """The per-image bits of alternating flip (Jordan's airbench): image ``i`` is mirrored in
    epoch ``e`` when ``bits[i] != (e is odd)``, so a random half is mirrored in even epochs and
    the other half in odd ones. Every image is seen both ways every two epochs, where independent
    coin flips leave a quarter of them unmirrored (or mirrored) for both."""
    return torch.randint(0, 2, (n,), generator=gen, device=gen.device).bool()


def augment(x: torch.Tensor, kind: str, gen: torch.Generator, pad: int = 4, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``kind``: ``none``, ``crop``, ``crop_flip``, or ``shift_flip`` (a random translation by
    up to 2 pixels with mirrored borders, then mirror the images where ``flips`` is set: the
    batch's slice of :func:`alternating_flips` for the epoch)."""
    if kind == "none":
        return x
    if kind == "shift_flip":
        if flips is None:
            raise ValueError("augment 'shift_flip' needs the batch's flips (alternating_flips)")
        x = random_crop(x, 2, gen, mode="reflect")
        return torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    x = random_crop(x, pad, gen)
    return random_flip(x, gen) if kind == "crop_flip" else x


def resolve_augment(kind: str, channels: int) -> str:
    """``auto`` → ``crop_flip`` for colour images, ``none`` for grey (digits must not be mirrored)."""
    if kind != "auto":
        return kind
    return "crop_flip" if channels == 3 else "none"
