"""LF: a low-frequency universal trigger (Zeng, Park, Mao and Jia, ICCV 2021, "Rethinking the
Backdoor Attacks' Triggers: A Frequency Perspective"; code ``YiZeng623/frequency-backdoor``,
``Sec5_Smooth_Trigger``).

A targeted universal adversarial perturbation, found as the paper's adaptive mask is
(:mod:`perturbd.triggers.adaptive`: passes over the adversary's samples in a seeded order; for each
sample that ``x + δ`` does not send to the target, one targeted DeepFool perturbation
(:func:`~perturbd.triggers.deepfool.deepfool_one`), kept only if DeepFool converged), except that
every DeepFool perturbation goes through a low-pass filter before it is added, and the budget
step *scales* δ into the ball ``‖δ‖_p ≤ ξ`` (:func:`scale_into`) instead of clipping it: scaling
keeps a sum of filtered steps in the filter's band, clipping would put high frequencies back. The
mask is then rounded to whole grey levels (:func:`~perturbd.triggers.adaptive.quantize`), so its
budget holds on every poisoned uint8 image; the rounding adds white noise of at most half a grey
level, the one part of the shipped mask outside the band.

Filters (:func:`low_pass`, applied per channel by FFT, so circularly):

- ``gaussian`` (default, the authors' ``gauss_smooth``): a Gaussian of ``sigma`` pixels; the
  authors' ``sig=6`` is σ = 6 pixels over a 30-tap window (5σ).
- ``ideal``: the 2-D DFT coefficients of radius above ``cutoff`` cycles per pixel set to zero;
  an orthogonal projection onto the band, so the mask before rounding has no energy above it.

Which model and which images: whatever the adversary has, exactly as for the adaptive mask (the
same :func:`~perturbd.attack.plan.plan_attack` path, every ``attack.knowledge`` level).

Departures from the authors' code, each named:

- The target is ``poison.target``, fixed: their loop re-targets to the label the perturbed
  samples most often go to ("dominant label"), and counts a sample as fooled when its label
  changed; here a sample counts when it goes to the target, and the stopping rate
  ``fooling_rate`` (their ``delta = 0.8``: 20 %) is measured on the rounded, clipped images.
- Their loop has no bound on the passes (``max_iter_uni = inf``); ``passes`` bounds it (20).
- Their update is ``v ← normalise(smooth(v + smooth(r)))``: the sum is smoothed again at every
  update and min–max rescaled to the range [0, 0.2] (a non-negative mask spanning 51 grey levels).
  Here ``δ ← scale_into(δ + low_pass(r))``: each step is filtered once (filtering δ again at every
  update shrinks all it has learnt, which only their stretching to full range undoes), δ keeps its
  sign and is scaled down only when it leaves the ball, like the adaptive mask's projection.
- Their filter is a separable convolution over a 30-tap window with zero padding, whose even
  length shifts the mask by half a pixel at each use; here the untruncated Gaussian is applied
  circularly in the frequency domain (on 28–32 pixel images the 30-tap window spans the image).
- A sample gets a step when ``x + δ`` is not at the target; theirs when its label has not changed
  (``f(x) == f(x + v)``). The step is the adaptive mask's targeted DeepFool
  (:mod:`perturbd.triggers.deepfool`), the minimal L2 step toward the target linearised at the
  unclipped ``x + δ``, as their ``tar_deepfool`` is.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn

from perturbd.trigger_params import LFParams
from perturbd.triggers.adaptive import _deepfool_update, _passes, universal_mask
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger


def frequency_radius(h: int, w: int) -> torch.Tensor:
    """The radius, cycles per pixel, of each coefficient of ``torch.fft.rfft2`` on ``h × w``."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fy**2 + fx**2)


def response(h: int, w: int, kind: str, sigma: float, cutoff: float) -> torch.Tensor:
    """The filter's gain on each ``rfft2`` coefficient: ``exp(−2π²σ²f²)`` (``gaussian``, the
    Fourier transform of a Gaussian of σ pixels) or ``f ≤ cutoff`` (``ideal``)."""
    radius = frequency_radius(h, w)
    if kind == "gaussian":
        return torch.exp(-2 * math.pi**2 * sigma**2 * radius**2)
    return (radius <= cutoff + 1e-12).float()


def low_pass(delta: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``delta`` ``(…, H, W)`` filtered per channel: its ``rfft2`` multiplied by ``gain`` (:func:`response`)."""
    h, w = delta.shape[-2:]
    out: torch.Tensor = torch.fft.irfft2(torch.fft.rfft2(delta) * gain.to(delta.device), s=(h, w))
    return out


def scale_into(delta: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    """``delta`` scaled down onto ``‖δ‖_norm ≤ budget`` when outside it (a scaling keeps the band)."""
    size = float(delta.abs().max()) if norm == "linf" else float(delta.norm())
    return delta * (budget / size) if size > budget else delta


def lf_perturbation(
    model: nn.Module, images: torch.Tensor, cfg: LFParams, target: int, seed: int
) -> tuple[torch.Tensor, dict[str, int | float]]:
    """The LF mask for uint8 ``images`` (module docstring): integer-valued, pixel units,
    ``(C, H, W)``, and ``{"passes": …, "sample_fooling_rate": …}``. Same seed ⇒ same mask."""
    h, w = images.shape[-2:]
    gain = response(h, w, cfg.low_pass, cfg.sigma, cfg.cutoff)
    update = _deepfool_update(cfg.overshoot, cfg.max_steps, target, partial(low_pass, gain=gain))
    args = (cfg.norm, cfg.budget, cfg.passes, cfg.fooling_rate, 1, seed)
    return _passes(model, images, target, update, *args, projection=scale_into, label="LF mask")


@register_trigger("lf")
def lf(cfg: LFParams, ctx: TriggerContext) -> Trigger:
    """Low-frequency universal perturbation on ``ctx.model`` from ``cfg.samples`` of ``ctx.samples``
    (the budget checked by the caller: :func:`~perturbd.triggers.adaptive.check_budget`)."""
    settings = {
        "method": "deepfool",
        "norm": cfg.norm,
        "budget": cfg.budget,
        "low_pass": cfg.low_pass,
        **({"sigma": cfg.sigma} if cfg.low_pass == "gaussian" else {"cutoff": cfg.cutoff}),
        "passes_max": cfg.passes,
    }
    compute = partial(lf_perturbation, cfg=cfg, target=ctx.target, seed=ctx.seed)
    return universal_mask("lf", ctx, cfg.samples, compute, settings)
