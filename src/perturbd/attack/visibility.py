"""Equal visibility: the strength of a mask set so that its poisoned images have a given PSNR.

With ``trigger.psnr`` the strength of any kind (the amplitude c of a static mask, the budget ξ of
an adaptive one) is searched so that the mean PSNR of the images the mask poisons, measured on the
adversary's own images (never the test set), is the asked value. PSNR falls by about
``20 log10`` of the strength, so each step of the search is a secant step on ``log(strength)``,
from a first guess that assumes exactly that slope. The search stops within ``TOLERANCE`` dB or
after ``MAX_TRIES`` masks and keeps the closest; uint8 rounding makes the PSNR of a quantized mask
a step function of its strength, so the PSNR reached (and the strength) are recorded beside the
asked value in the trigger's ``info``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from perturbd.config import TriggerConfig
from perturbd.errors import ConfigError
from perturbd.metrics import stealth
from perturbd.triggers import Trigger

TOLERANCE = 0.05  # dB
MAX_TRIES = 6
LIMITS = {"amplitude": (1e-3, 255.0), "budget": (1.0, 10000.0)}


def mean_psnr(trigger: Trigger, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of ``images`` poisoned by ``trigger`` against themselves."""
    return stealth(images, trigger.apply(images))["psnr_mean"]


def at_psnr(cfg: TriggerConfig, build: Callable[[TriggerConfig], Trigger], images: torch.Tensor) -> Trigger:
    """The mask of ``cfg`` built (by ``build``) at the strength whose poisoned ``images`` have
    mean PSNR ``cfg.psnr``; ``cfg`` itself when it asks for no PSNR."""
    if cfg.psnr is None:
        return build(cfg)
    if cfg.kind == "image" and cfg.path is not None and cfg.path.suffix.lower() != ".png":
        raise ConfigError(f"trigger.psnr scales a mask by trigger.amplitude, which only PNG masks use; got {cfg.path.name}: drop trigger.psnr")
    key, (low, high) = cfg.strength_key, LIMITS[cfg.strength_key]
    tried: list[tuple[float, float, Trigger]] = []  # (log strength, PSNR − goal, mask)

    def attempt(strength: float) -> None:
        strength = min(max(strength, low), high)
        trig = build(cfg.model_copy(update={key: strength, "psnr": None}))
        tried.append((math.log(strength), mean_psnr(trig, images) - cfg.psnr, trig))  # type: ignore[operator]

    attempt(getattr(cfg, key))
    attempt(math.exp(tried[0][0]) * 10 ** (tried[0][1] / 20))  # PSNR ∝ −20 log10(strength)
    while len(tried) < MAX_TRIES and min(abs(t[1]) for t in tried) > TOLERANCE:
        (x0, f0, _), (x1, f1, _) = tried[-2], tried[-1]
        if f1 == f0 or x1 == x0:  # a flat step of the rounding: nothing more to learn from these two
            break
        attempt(math.exp(x1 - f1 * (x1 - x0) / (f1 - f0)))
    x, miss, best = min(tried, key=lambda t: abs(t[1]))
    best.info = {**best.info, "psnr_goal": cfg.psnr, "psnr_on_adversary_images": cfg.psnr + miss, key: math.exp(x), "psnr_tries": len(tried)}
    return best
