"""Equal visibility: the strength of a trigger set so that its poisoned images have a given PSNR
(``trigger.psnr``) or SSIM (``trigger.ssim``).

The strength of any kind (the field its ``Params.strength_key`` names, :mod:`perturbd.trigger_params`:
the amplitude c of a static mask, the budget ξ of an adaptive one, α of ``blended``, Δ of ``sig``,
s of ``wanet``), within the bounds its ``Params.search_bounds`` gives, is searched so that the mean
PSNR (or SSIM) of the images the trigger poisons, measured on the adversary's own images (never the
test set), is the asked value. PSNR falls by about
``20 log10`` of the strength, so each step of the search is a secant step on ``log(strength)``,
from a first guess that assumes exactly that slope. SSIM is searched on the same scale, as
``−10 log10(1 − SSIM)`` (its "dB"; small distortions move ``1 − SSIM`` with the square of the
strength, as they move the mean square error). The search stops within ``TOLERANCE`` dB or after
``MAX_TRIES`` triggers and keeps the closest; uint8 rounding makes the PSNR of a quantized trigger
a step function of its strength (static masks dither a non-integral amplitude to smooth the steps,
see :mod:`perturbd.triggers.static`), so the value reached (and the strength) are recorded beside
the asked value in the trigger's ``info``. When the search still misses and the trigger is a
quantized additive mask, a last step thins the closest mask that is too visible (:func:`thin`: a
seeded share of its pixels one grey level lighter, ``info["thinned_share"]``), which keeps its
norm bounds; an L∞ adaptive mask, whose pixels mostly sit at ``±floor(ξ)``, needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from perturbd.config import TriggerConfig
from perturbd.errors import ConfigError
from perturbd.metrics import mean_finite, psnr_each, stealth
from perturbd.seeding import derived_generator
from perturbd.triggers import Trigger

TOLERANCE = 0.05  # dB (for SSIM: of −10 log10(1 − SSIM))
MAX_TRIES = 8


def mean_psnr(trigger: Trigger, images: torch.Tensor, seed: int = 0) -> float:
    """Mean PSNR (dB) of ``images`` poisoned by ``trigger`` against themselves (as
    :func:`~perturbd.metrics.stealth` reports it, without its SSIM): the copies a poisoned training
    set holds (:meth:`~perturbd.triggers.Trigger.poison_copies`, drawn with ``seed``)."""
    return mean_finite(psnr_each(images, trigger.poison_copies(images, seed)))


def mean_ssim(trigger: Trigger, images: torch.Tensor, seed: int = 0) -> float:
    """Mean SSIM of ``images`` poisoned by ``trigger`` (its training copies) against themselves."""
    return stealth(images, trigger.poison_copies(images, seed))["ssim_mean"]


def _ssim_db(ssim: float) -> float:
    return -10 * math.log10(max(1e-12, 1 - ssim))


def at_psnr(cfg: TriggerConfig, build: Callable[[TriggerConfig], Trigger], images: torch.Tensor, seed: int = 0) -> Trigger:
    """The trigger of ``cfg`` built (by ``build``) at the strength whose poisoned ``images`` have
    mean PSNR ``cfg.psnr`` (or mean SSIM ``cfg.ssim``); ``cfg`` itself when it asks for neither.

    ``seed`` draws the pixels a last step may thin (:func:`thin`)."""
    if cfg.psnr is None and cfg.ssim is None:
        return build(cfg)
    if cfg.kind == "image" and cfg.path is not None and cfg.path.suffix.lower() != ".png":
        raise ConfigError(
            f"trigger.psnr and trigger.ssim scale a mask by trigger.amplitude, which only PNG masks use; got {cfg.path.name}: drop them"
        )
    name = "psnr" if cfg.psnr is not None else "ssim"
    goal: float = cfg.psnr if cfg.psnr is not None else _ssim_db(cfg.ssim)  # type: ignore[arg-type]
    key, (low, high) = cfg.strength_key, cfg.params.search_bounds()
    tried: list[tuple[float, float, float, Trigger]] = []  # (log strength, dB − goal, value reached, trigger)

    def miss(trig: Trigger) -> tuple[float, float]:
        reached = mean_psnr(trig, images, seed) if name == "psnr" else mean_ssim(trig, images, seed)
        return (reached if name == "psnr" else _ssim_db(reached)) - goal, reached

    def attempt(strength: float) -> None:
        strength = min(max(strength, low), high)
        trig = build(cfg.at_strength(strength))
        tried.append((math.log(strength), *miss(trig), trig))

    attempt(cfg.params.strength)
    slope = -20 if cfg.params.lighter_when_larger else 20
    attempt(math.exp(tried[0][0]) * 10 ** (tried[0][1] / slope))  # PSNR ∝ −20 log10(strength) (+20: lighter_when_larger)
    while len(tried) < MAX_TRIES and min(abs(t[1]) for t in tried) > TOLERANCE:
        (x0, f0, _, _), (x1, f1, _, _) = tried[-2], tried[-1]
        if f1 == f0 or x1 == x0:  # a flat step of the rounding: nothing more to learn from these two
            break
        attempt(math.exp(x1 - f1 * (x1 - x0) / (f1 - f0)))
    x, off, reached, best = min(tried, key=lambda t: abs(t[1]))
    if abs(off) > TOLERANCE and off > 0 and best.additive and best.quantize:  # too light: a mask one grey level stronger, to thin
        attempt(math.exp(x) + 1.0)
        x, off, reached, best = min(tried, key=lambda t: abs(t[1]))
    strong = [t for t in tried if t[1] < 0]
    if abs(off) > TOLERANCE and strong and best.additive and best.quantize:
        x_strong, _, _, stronger = max(strong, key=lambda t: t[1])
        thinned = thin(stronger, lambda t: miss(t)[0], seed)
        thin_off, thin_reached = miss(thinned)
        if abs(thin_off) < abs(off):
            x, reached, best = x_strong, thin_reached, thinned
    best.info = {
        **best.info,
        f"{name}_goal": getattr(cfg, name),
        f"{name}_on_adversary_images": reached,
        key: math.exp(x),
        f"{name}_tries": len(tried),
    }
    return best


THIN_STEPS = 16


def thin(trigger: Trigger, miss: Callable[[Trigger], float], seed: int) -> Trigger:
    """A quantized additive mask that is too visible (``miss < 0``) made lighter until ``miss`` is
    about 0: a seeded share of its pixels moved one grey level toward zero, the share found by
    bisection (:data:`THIN_STEPS` steps). Its rounded values only shrink, so every norm bound of
    the mask (an adaptive mask's budget ξ after rounding) still holds. Needed where the strength
    itself moves the PSNR in steps: an L∞ adaptive mask saturates most pixels at ``±floor(ξ)``."""
    q = torch.round(trigger.delta)
    lighter = q - torch.sign(q)
    u = torch.rand(q.shape, generator=derived_generator(seed, "thin", "visibility"))

    def at(share: float) -> Trigger:
        info = {**trigger.info, "thinned_share": share}
        return replace(trigger, delta=torch.where(u < share, lighter, q), info=info)

    lo, hi = 0.0, 1.0
    for _ in range(THIN_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if miss(at(mid)) < 0 else (lo, mid)
    return at(lo) if abs(miss(at(lo))) <= abs(miss(at(hi))) else at(hi)
