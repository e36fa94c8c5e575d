"""SIG: a horizontal sinusoidal signal added to the image (Barni, Kallas and Tondi, "A new Backdoor
Attack in CNNs by training set corruption without label poisoning", ICIP 2019, arXiv 1902.11237).

``v(i, j) = Δ · sin(2π · j · f / m)`` for a pixel of row ``i`` and column ``j`` of an image ``m``
pixels wide: the same on every row and every colour channel. It is additive (``x' = clip(x + v)``),
so it is applied and saved as every other additive mask. Applied quantized (``ctx.quantize``,
the default), it is realised in whole grey levels by seeded dithering
(:func:`~perturbd.triggers.static.dithered_round`: each pixel ``floor`` or ``ceil`` of ``v``,
``ceil`` with the probability of its fraction), so that rounding to uint8 changes nothing
and the signal's mean square moves smoothly with Δ; a plain round of a sinusoid that takes a
handful of values would move it in steps (and ``trigger.psnr`` could not land on its goal).
``Δ = 20``, ``f = 6`` (``trigger.sig_amplitude``, ``trigger.frequency``) are the sinusoid's
defaults here (the values reimplementations commonly use). The poison is injected *clean-label* in the paper: only
target-class training images carry the signal and keep their labels (``poison.mode:
clean_label``); at test time the signal is added to images of other classes.

``sig_ramp`` is the paper's other signal, ``v(i, j) = Δ · j / m``, the one the authors' MNIST code
uses (KassemKallas/BackdoorAttack-ICIP2019, ``parameters.py``: ramp, ``Δ = 30`` in training and at
test, 10 % of the target class's training images; set ``trigger.sig_amplitude: 30`` and a
clean-label ``poison.rate`` of about a tenth of the target class's share). Where perturbd departs
from that code:

- it clips ``x + v`` to 0–255; the code casts to uint8 *before* clipping, so a stroke pixel near
  255 wraps around to a dark one. ``sig_ramp_wrap`` and ``sig_wrap`` are that cast: the same
  dithered signal, added modulo 256 (``x' = (x + v) mod 256``), so on MNIST the ramp hollows out
  the bright core of every stroke right of the first column (a saturated pixel plus one grey level
  wraps to 0): another, far more visible trigger, kept under its own names;
- ``Δ · j / m`` is dithered to whole grey levels (as above) where the code truncates it;
- the same Δ poisons the training images and the test images (the code's default; its
  ``Deltas_ts`` option to test with another Δ is not offered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from perturbd.trigger_params import SigParams, SigRampParams
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger
from perturbd.triggers.static import dithered_round


def sig_pattern(height: int, width: int, amplitude: float, frequency: float) -> torch.Tensor:
    """``(1, H, W)`` float32: ``Δ · sin(2π j f / m)`` in pixel units 0–255, ``m`` = ``width``."""
    cols = torch.arange(width, dtype=torch.float64)
    row = amplitude * torch.sin(2 * math.pi * cols * frequency / width)
    return row.float().expand(height, width).clone().unsqueeze(0)


def ramp_pattern(height: int, width: int, amplitude: float) -> torch.Tensor:
    """``(1, H, W)`` float32: ``Δ · j / m`` in pixel units 0–255, ``m`` = ``width`` (0 in the first
    column, ``Δ (m − 1) / m`` in the last)."""
    row = amplitude * torch.arange(width, dtype=torch.float64) / width
    return row.float().expand(height, width).clone().unsqueeze(0)


@register_trigger("sig")
def sig(cfg: SigParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    info = {"sig_amplitude": cfg.sig_amplitude, "frequency": cfg.frequency}
    signal = sig_pattern(h, w, cfg.sig_amplitude, cfg.frequency)
    return Trigger(dithered_round(signal, ctx.seed) if ctx.quantize else signal, "sig", info)


@register_trigger("sig_ramp")
def sig_ramp(cfg: SigRampParams, ctx: TriggerContext) -> Trigger:
    _, h, w = ctx.image_shape
    signal = ramp_pattern(h, w, cfg.sig_amplitude)
    return Trigger(dithered_round(signal, ctx.seed) if ctx.quantize else signal, "sig_ramp", {"sig_amplitude": cfg.sig_amplitude})


@dataclass
class Wrapped(Trigger):
    """``x' = (x + δ) mod 256``: the additive signal ``δ`` (pixel units, held in ``delta``) with the
    uint8 wrap-around of the SIG authors' code in place of clipping. The sum is taken modulo 256
    grey levels on float images (:func:`~perturbd.triggers.base.transform_images` rounds the result
    back to uint8 for uint8 images); a sum within 10⁻⁴ grey level below a multiple of 256 counts as
    reaching it, so that ``255/255`` plus one level wraps to 0 as in uint8 despite float rounding.
    δ is whole grey levels when quantized (dithered by the factories), so uint8 images get exactly
    ``(x + δ) mod 256``."""

    family: ClassVar[str] = "wrap"

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        total = images * 255.0 + self.delta.to(images.device, images.dtype)
        return (total - 256.0 * torch.floor((total + 1e-4) / 256.0)) / 255.0


@register_trigger("sig_wrap", family=Wrapped)
def sig_wrap(cfg: SigParams, ctx: TriggerContext) -> Trigger:
    base = sig(cfg, ctx)
    return Wrapped(base.delta, "sig_wrap", base.info)


@register_trigger("sig_ramp_wrap", family=Wrapped)
def sig_ramp_wrap(cfg: SigRampParams, ctx: TriggerContext) -> Trigger:
    base = sig_ramp(cfg, ctx)
    return Wrapped(base.delta, "sig_ramp_wrap", base.info)
