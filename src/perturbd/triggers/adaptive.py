"""Adaptive masks: a targeted universal adversarial perturbation computed on the adversary's model.

δ is found in pixel units of the 0–255 scale; the model sees ``clip(x + δ / 255)`` with ``x`` in
[0, 1]. Two methods share the objective (send every sample to the target ``t``) and the budget
``‖δ‖_p ≤ ξ`` (``p`` = ``linf`` or ``l2``; L2 over all pixels and channels):

- ``deepfool`` (the paper's): passes over the samples; for a batch of samples, a targeted
  DeepFool perturbation for each one that ``x + δ`` does not yet send to ``t``
  (:func:`targeted_deepfool`, all samples at once), their **sum** added to δ, then δ projected
  onto the budget ball. The paper adds each sample's perturbation in turn, in full; summing the
  batch's perturbations, all computed at the same δ, is the batched form of that update. (Their
  mean moves δ a batch size times less per pass: with 64 samples it needed four passes where the
  reference needs one, on the benchmark of ``benchmarks/bench_adaptive.py``.)
- ``gradient`` (fast path): signed (L∞) or normalised (L2) gradient steps of ``lr`` pixel units on
  the targeted cross-entropy, on mini-batches, with the same projection.

Both stop once the quantized mask reaches ``fooling_rate`` on the samples, or after ``passes``.
The returned δ is integer-valued (:func:`quantize`), so the budget holds after the uint8 rounding
of :meth:`Trigger.apply`. :func:`reference_deepfool_uap` is the one-image-at-a-time algorithm of
the paper, kept as a reference for tests and benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.config import TriggerConfig
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError, DataError
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger

Update = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- budget


def check_budget(norm: str, budget: float) -> None:
    """A :class:`ConfigError` if no non-zero integer mask fits the budget."""
    if norm not in ("linf", "l2"):
        raise ConfigError(f"trigger.norm must be linf or l2, got '{norm}'")
    if budget < 1:
        raise ConfigError(
            f"trigger.budget {budget:g} ({norm}) is below one grey level: every uint8 mask within it is zero; use a budget ≥ 1"
        )


def project(delta: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    """Euclidean projection of ``delta`` (pixel units) onto ``{‖δ‖_norm ≤ budget}``."""
    if norm == "linf":
        return delta.clamp(-budget, budget)
    size = float(delta.norm())
    return delta * (budget / size) if size > budget else delta


def quantize(delta: torch.Tensor, norm: str, budget: float) -> torch.Tensor:
    """An integer-valued mask close to ``delta`` whose norm is within ``budget`` after rounding.

    L∞: round, then clamp to ``±floor(ξ)``. L2: round; if the rounded mask is too long, scale
    ``delta`` down to norm ξ and round again; if that is still too long, truncate toward zero
    (``|trunc(v)| ≤ |v|`` element-wise, so the norm is at most ξ).
    """
    if norm == "linf":
        cap = math.floor(budget + 1e-9)
        return torch.round(delta).clamp(-cap, cap)
    q = torch.round(delta)
    if float(q.norm()) <= budget:
        return q
    size = float(delta.norm())
    scaled = delta * (budget / size)
    q = torch.round(scaled)
    return q if float(q.norm()) <= budget else torch.trunc(scaled)


# --------------------------------------------------------------------------- model helpers


def _perturbed(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Model input ``clip(x + δ / 255)``; ``x`` float in [0, 1], ``δ`` pixel units (broadcast)."""
    return (x + delta / 255.0).clamp(0.0, 1.0)


@torch.no_grad()
def measure_fooling_rate(model: nn.Module, images: torch.Tensor, trigger: Trigger, target: int, batch: int = 512) -> float:
    """Fraction of ``images`` (uint8, none of class ``target``) that ``model`` sends to ``target``
    once ``trigger`` is applied with :meth:`Trigger.apply` (clip + uint8 rounding)."""
    if len(images) == 0:
        raise DataError("fooling rate of an empty image set is undefined; give the adversary more images")
    device = next(model.parameters()).device
    model.eval()
    hit = 0
    for i in range(0, len(images), batch):
        x = to_float01(trigger.apply(images[i : i + batch]).to(device))
        hit += int((model(x).argmax(1) == target).sum())
    return hit / len(images)


# --------------------------------------------------------------------------- DeepFool


def targeted_deepfool(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> torch.Tensor:
    """Per-sample targeted DeepFool perturbations ``r`` (pixel units) toward ``target``, batched.

    For each sample of ``x`` (float ``(B, C, H, W)`` in [0, 1]) at ``x + δ``: while its top class
    ``k`` is not ``target`` (at most ``max_steps``), linearise ``g = f_t − f_k`` and step to the
    linearised boundary ``g = 0`` with the minimal L2 step ``|g| / ‖∇g‖² · ∇g``. Returns the
    accumulated steps times ``1 + overshoot``, ``(B, C, H, W)``; zero for samples already at
    ``target``. All samples still on their way move at once (one forward and one backward per
    step); a sample that reached ``target`` leaves the batch.
    """
    model.eval()
    r = torch.zeros_like(x)
    todo = torch.arange(len(x), device=x.device)
    for _ in range(max_steps):
        xr = _perturbed(x[todo], delta + (1 + overshoot) * r[todo]).detach().requires_grad_(True)
        out = model(xr)
        top = out.argmax(1)
        active = top != target
        if not bool(active.any()):
            break
        g = out[:, target] - out.gather(1, top[:, None]).squeeze(1)  # ≤ 0 where active
        (grad,) = torch.autograd.grad(g[active].sum(), xr)
        grad = grad[active] / 255.0  # d g / d δ, δ in pixel units
        sq = grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        todo = todo[active]
        r[todo] += (g.detach()[active].abs() / sq).view(-1, 1, 1, 1) * grad
    return (1 + overshoot) * r


def deepfool_one(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: int, overshoot: float = 0.02, max_steps: int = 10
) -> torch.Tensor:
    """:func:`targeted_deepfool` for one sample ``x`` ``(1, C, H, W)``, written plainly (the reference)."""
    model.eval()
    r = torch.zeros_like(x)
    for _ in range(max_steps):
        xr = _perturbed(x, delta + (1 + overshoot) * r).detach().requires_grad_(True)
        out = model(xr)[0]
        top = int(out.argmax())
        if top == target:
            break
        g = out[target] - out[top]
        (grad,) = torch.autograd.grad(g, xr)
        grad = grad / 255.0
        r = r + float(g.detach().abs()) / max(float(grad.pow(2).sum()), 1e-12) * grad
    return (1 + overshoot) * r


def _deepfool_update(overshoot: float, max_steps: int, target: int) -> Update:
    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return delta + targeted_deepfool(model, x, delta, target, overshoot, max_steps).sum(0)

    return update


def _gradient_update(norm: str, lr: float, target: int) -> Update:
    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        d = delta.detach().requires_grad_(True)
        labels = torch.full((len(x),), target, dtype=torch.long, device=x.device)
        loss = F.cross_entropy(model(_perturbed(x, d)), labels)
        (grad,) = torch.autograd.grad(loss, d)
        if norm == "linf":
            return delta - lr * grad.sign()
        scale = lr * math.sqrt(grad.numel()) / max(float(grad.norm()), 1e-12)  # RMS step of lr per pixel
        return delta - scale * grad

    return update


# --------------------------------------------------------------------------- universal perturbation


def universal_perturbation(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    *,
    method: str = "deepfool",
    norm: str = "linf",
    budget: float = 10.0,
    overshoot: float = 0.02,
    max_steps: int = 10,
    lr: float = 2.0,
    passes: int = 5,
    fooling_rate: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A targeted universal perturbation toward ``target`` for uint8 ``images`` (batched fast path).

    Returns the integer-valued mask ``(C, H, W)`` in pixel units (already :func:`quantize`\\ d) and
    ``{"passes": …, "sample_fooling_rate": …}``. The rate used to stop is measured on the
    quantized mask with the real uint8 rounding. Same seed ⇒ same mask.
    """
    check_budget(norm, budget)
    if method == "deepfool":
        update = _deepfool_update(overshoot, max_steps, target)
    elif method == "gradient":
        update = _gradient_update(norm, lr, target)
    else:
        raise ConfigError(f"trigger.method must be deepfool or gradient, got '{method}'")
    return _passes(model, images, target, update, norm, budget, passes, fooling_rate, batch_size, seed)


def _passes(
    model: nn.Module, images: torch.Tensor, target: int, update: Update, norm: str, budget: float, passes: int, fooling_rate: float, batch_size: int, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Passes over ``images`` in a seeded order, ``batch_size`` at a time: ``δ ← project(update(δ))``;
    after each pass the quantized mask's fooling rate, stopping once it reaches ``fooling_rate``."""
    device = next(model.parameters()).device
    model.eval()
    x_all = to_float01(images).to(device)
    delta = torch.zeros(images.shape[1:], device=device)
    gen = torch.Generator().manual_seed(seed)
    rate, used = 0.0, 0
    for used in range(1, passes + 1):
        order = torch.randperm(len(images), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            delta = project(update(model, x_all[order[i : i + batch_size]], delta), norm, budget).detach()
        rate = measure_fooling_rate(model, images, Trigger(quantize(delta.cpu(), norm, budget), "adaptive"), target)
        if rate >= fooling_rate:
            break
    return quantize(delta.cpu(), norm, budget), {"passes": used, "sample_fooling_rate": rate}


def reference_deepfool_uap(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    *,
    norm: str = "linf",
    budget: float = 10.0,
    overshoot: float = 0.02,
    max_steps: int = 10,
    passes: int = 5,
    fooling_rate: float = 0.9,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The paper's algorithm one image at a time (slow; a reference for tests and benchmarks).

    For each sample in a seeded order that ``x + δ`` does not send to ``target``: one targeted
    DeepFool perturbation, added to δ in full, then δ projected onto the budget ball. Returns the
    quantized mask and the same facts as :func:`universal_perturbation`.
    """
    check_budget(norm, budget)

    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return delta + deepfool_one(model, x, delta, target, overshoot, max_steps)[0]  # + 0 if x + δ is at t

    return _passes(model, images, target, update, norm, budget, passes, fooling_rate, 1, seed)


# --------------------------------------------------------------------------- the registered trigger


def non_target(data: ImageDataset, target: int) -> torch.Tensor:
    """Images of ``data`` whose label is not ``target`` (uint8)."""
    return data.images[data.labels != target]


def pick_samples(data: ImageDataset, target: int, count: int, seed: int) -> torch.Tensor:
    """A seeded choice of ``count`` images of ``data`` outside class ``target`` (all if fewer)."""
    pool = non_target(data, target)
    if len(pool) == 0:
        raise DataError(f"the adversary has no image outside the target class {target}; it cannot compute a mask")
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(pool), generator=gen)[: min(count, len(pool))].sort().values
    return pool[keep]


@register_trigger("adaptive", needs_model=True)
def adaptive(cfg: TriggerConfig, ctx: TriggerContext) -> Trigger:
    """Targeted universal perturbation on ``ctx.model`` from ``cfg.samples`` of ``ctx.samples``."""
    check_budget(cfg.norm, cfg.budget)
    if ctx.model is None or ctx.samples is None:
        raise ConfigError("trigger 'adaptive' is computed from a model and sample images; build it through the attack or `perturbd trigger make`")
    if ctx.samples.image_shape != tuple(ctx.image_shape):
        raise DataError(f"adversary samples are {ctx.samples.image_shape}, the images are {tuple(ctx.image_shape)}")
    samples = pick_samples(ctx.samples, ctx.target, cfg.samples, ctx.seed)
    model = ctx.model.to(ctx.device).eval()
    started = time.perf_counter()
    delta, facts = universal_perturbation(
        model,
        samples,
        ctx.target,
        method=cfg.method,
        norm=cfg.norm,
        budget=cfg.budget,
        overshoot=cfg.overshoot,
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        passes=cfg.passes,
        fooling_rate=cfg.fooling_rate,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
    )
    seconds = time.perf_counter() - started
    trigger = Trigger(delta, "adaptive")
    holdout = non_target(ctx.holdout, ctx.target) if ctx.holdout is not None else torch.zeros(0)
    trigger.info = {
        "method": cfg.method,
        "norm": cfg.norm,
        "budget": cfg.budget,
        "target": ctx.target,
        "seed": ctx.seed,
        "samples": len(samples),
        "passes_used": facts["passes"],
        "passes_max": cfg.passes,
        "seconds": round(seconds, 3),
        "fooling_rate_samples": measure_fooling_rate(model, samples, trigger, ctx.target),
        "fooling_rate_holdout": measure_fooling_rate(model, holdout, trigger, ctx.target) if len(holdout) else None,
        "holdout_size": len(holdout),
        **trigger.norms(),
    }
    return trigger
