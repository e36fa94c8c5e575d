"""Adaptive masks: a targeted universal adversarial perturbation computed on the adversary's model.

δ is found in pixel units of the 0–255 scale; the model sees ``clip(x + δ / 255)`` with ``x`` in
[0, 1]. The methods share the objective (send every sample to the target ``t``) and the budget
``‖δ‖_p ≤ ξ`` (``p`` = ``linf`` or ``l2``; L2 over all pixels and channels):

- ``deepfool`` (the paper's algorithm, the default): passes over the samples in a seeded order;
  for each sample that ``x + δ`` does not yet send to ``t``, one targeted DeepFool perturbation
  (:func:`~perturbd.triggers.deepfool.deepfool_one`) is added to δ — only if DeepFool converged,
  and computed at the unclipped ``x + δ``, as the reference code (LTS4 ``universal_pert.py``)
  does — and δ is projected onto the budget ball *before the next sample*. Departures from the
  reference: DeepFool is targeted (toward ``t``, as Liao et al.'s attack needs) where the
  reference's is untargeted; the L2 projection shrinks δ onto the ball only when it is outside
  (the reference's ``proj_lp`` rescales every δ to norm ξ); the pass loop stops on the fooling
  rate of the final, clipped and uint8-rounded images rather than of the unclipped ones.
- ``deepfool_batched`` (a faster variant with other results): the DeepFool perturbations of a
  batch of ``batch_size`` samples are all computed at the same δ
  (:func:`~perturbd.triggers.deepfool.targeted_deepfool`), the sum of those that converged is
  added to δ and δ is projected once. A sample that an earlier sample's step would already have sent to ``t`` still
  gets its own step, and the sum overshoots the ball: the masks are denser (more pixels at ±ξ)
  and more visible than the paper's. With ``batch_size: 1`` it is the paper's algorithm. The
  measured difference is in the README's "Speed" table (``bench_adaptive``).
- ``gradient`` (fast path): signed (L∞) or normalised (L2) gradient steps of ``lr`` pixel units on
  the targeted cross-entropy, on mini-batches, with the same projection.

All stop once the quantized mask reaches ``fooling_rate`` on the samples, or after ``passes``.
The returned δ is integer-valued (:func:`quantize`), so the budget holds after the uint8 rounding
of :meth:`Trigger.apply`. :func:`targeted_uaps` computes one signed-gradient universal
perturbation per label, all labels at once (the update audit's).

This module holds kernels only: which model and which images the adversary has is decided by
:mod:`perturbd.attack`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError, DataError
from perturbd.metrics import outside, target_rate
from perturbd.models import frozen, model_device
from perturbd.progress import stage
from perturbd.trigger_params import AdaptiveParams
from perturbd.triggers.base import Trigger, TriggerContext, add_delta, register_trigger
from perturbd.triggers.deepfool import converged, deepfool_one, perturbed, targeted_deepfool

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


# --------------------------------------------------------------------------- steps


def target_gradient(model: nn.Module, x: torch.Tensor, deltas: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient, with respect to each of the ``K`` perturbations ``deltas`` ``(K, C, H, W)``
    (pixel units), of the cross-entropy toward ``targets[k]`` of every ``clip(x + deltas[k])``,
    summed over the batch ``x`` ``(B, C, H, W)``: one forward pass over ``K × B`` images."""
    d = deltas.detach().requires_grad_(True)
    inputs = perturbed(x[None], d[:, None]).flatten(0, 1)
    loss = F.cross_entropy(model(inputs).float(), targets.repeat_interleave(len(x)), reduction="sum")
    (grad,) = torch.autograd.grad(loss, d)
    return grad


def _deepfool_update(
    overshoot: float, max_steps: int, target: int, step_filter: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Update:
    """The paper's step, for one sample ``x`` ``(1, C, H, W)``: δ + its DeepFool perturbation if
    DeepFool converged (:func:`~perturbd.triggers.deepfool.converged`), else δ unchanged; zero
    when ``x + δ`` is already at ``target``. ``step_filter`` (LF's low-pass) filters the
    perturbation before it is added."""

    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        r, steps = deepfool_one(model, x, delta, target, overshoot, max_steps)
        if not bool(converged(torch.tensor(steps), max_steps)):
            return delta
        return delta + (step_filter(r[0]) if step_filter is not None else r[0])

    return update


def _deepfool_batched_update(overshoot: float, max_steps: int, target: int) -> Update:
    """The batched variant's step: δ + the sum of the batch's converged DeepFool perturbations,
    all computed at δ."""

    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        r, steps = targeted_deepfool(model, x, delta, target, overshoot, max_steps)
        return delta + r[converged(steps, max_steps)].sum(0)

    return update


def _gradient_update(norm: str, lr: float, target: int) -> Update:
    def update(model: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        grad = target_gradient(model, x, delta[None], torch.tensor([target], device=x.device))[0]
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
    """A targeted universal perturbation toward ``target`` for uint8 ``images`` (module docstring).

    ``batch_size`` is the number of samples per update of ``deepfool_batched`` and ``gradient``;
    ``deepfool`` updates δ after every sample, as the paper does. Returns the integer-valued mask
    ``(C, H, W)`` in pixel units (already :func:`quantize`\\ d) and
    ``{"passes": …, "sample_fooling_rate": …}``. The rate used to stop is measured on the
    quantized mask with the real uint8 rounding. Same seed ⇒ same mask. ``norm`` is ``linf`` or
    ``l2`` and ``budget`` at least one grey level (:func:`check_budget`, which a run's attack plan
    calls once, before the adversary trains).
    """
    if method == "deepfool":
        update, batch_size = _deepfool_update(overshoot, max_steps, target), 1
    elif method == "deepfool_batched":
        update = _deepfool_batched_update(overshoot, max_steps, target)
    elif method == "gradient":
        update = _gradient_update(norm, lr, target)
    else:
        raise ConfigError(f"trigger.method must be deepfool, deepfool_batched or gradient, got '{method}'")
    return _passes(model, images, target, update, norm, budget, passes, fooling_rate, batch_size, seed)


def _passes(
    model: nn.Module,
    images: torch.Tensor,
    target: int,
    update: Update,
    norm: str,
    budget: float,
    passes: int,
    fooling_rate: float,
    batch_size: int,
    seed: int,
    projection: Callable[[torch.Tensor, str, float], torch.Tensor] = project,
    label: str = "adaptive mask",
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Passes over ``images`` in a seeded order, ``batch_size`` at a time: ``δ ← projection(update(δ))``
    (:func:`project` unless LF's scaling is given); after each pass the quantized mask's fooling
    rate, stopping once it reaches ``fooling_rate``. Progress goes to the active monitor
    (:func:`perturbd.progress.stage`, as ``label``), one step per update."""
    device = model_device(model)
    model.eval()
    x_all = to_float01(images).to(device)
    delta = torch.zeros(images.shape[1:], device=device)
    gen = torch.Generator().manual_seed(seed)
    rate, used = 0.0, 0
    updates = -(-len(images) // batch_size)
    with stage(label, passes * updates) as progress:  # one step per update; it may stop passes early
        for used in range(1, passes + 1):  # noqa: B007 (the passes used are read after the loop)
            order = torch.randperm(len(images), generator=gen).tolist()
            for i in range(0, len(order), batch_size):
                delta = projection(update(model, x_all[order[i : i + batch_size]], delta), norm, budget).detach()
                progress.advance(images=min(batch_size, len(order) - i))
            rate = target_rate(model, images, Trigger(quantize(delta.cpu(), norm, budget), "adaptive").apply, target)
            if rate >= fooling_rate:
                break
    return quantize(delta.cpu(), norm, budget), {"passes": used, "sample_fooling_rate": rate}


def targeted_uaps(
    model: nn.Module, images: torch.Tensor, targets: list[int], *, epsilon: float, steps: int, batch_size: int, seed: int
) -> torch.Tensor:
    """One targeted universal perturbation per label of ``targets``, ``(K, C, H, W)`` in pixel
    units with ``|δ| ≤ epsilon``, all labels at once.

    Each of ``steps`` steps draws one batch of ``images`` (uint8, seeded, with replacement),
    blends it with all K perturbations (:func:`target_gradient`: one forward pass over K × batch
    images), moves each perturbation by a signed step of ``max(2.5 ε / steps, ε / 50)`` down the
    cross-entropy toward its label and clips it to the L∞ ball.
    """
    device = model_device(model)
    step = max(2.5 * epsilon / steps, epsilon / 50)
    deltas = torch.zeros(len(targets), *images.shape[1:], device=device)
    labels = torch.tensor(targets, device=device)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(images))
    with frozen(model), stage("universal perturbations", steps) as progress:
        for _ in range(steps):
            x = to_float01(images[torch.randint(0, len(images), (batch,), generator=gen)].to(device))
            deltas = (deltas - step * target_gradient(model, x, deltas, labels).sign()).clamp(-epsilon, epsilon)
            progress.advance(images=batch)
    return deltas.cpu()


def target_rates(model: nn.Module, data: ImageDataset, deltas: torch.Tensor) -> list[float]:
    """For each label k: the share of the images of ``data`` not of class k that ``deltas[k]``
    (pixel units, rounded as :func:`~perturbd.triggers.base.add_delta` rounds) sends to k."""
    return [target_rate(model, outside(data, k), partial(add_delta, delta=delta), k) for k, delta in enumerate(deltas)]


# --------------------------------------------------------------------------- the registered trigger


def pick_samples(data: ImageDataset, target: int, count: int, seed: int, sources: Sequence[int] | None = None) -> torch.Tensor:
    """A seeded choice of ``count`` images of ``data`` outside class ``target`` and, for a
    source-specific attack, in the ``sources`` (all of them if fewer)."""
    pool = outside(data, target, sources)
    if len(pool) == 0:
        raise DataError(
            f"the adversary has no image outside the target class {target} (sources {sources or 'all'}); it cannot compute a mask"
        )
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(pool), generator=gen)[: min(count, len(pool))].sort().values
    return pool[keep]


def universal_mask(
    kind: str,
    ctx: TriggerContext,
    count: int,
    compute: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, Any]]],
    settings: dict[str, Any],
) -> Trigger:
    """The additive trigger ``kind`` that ``compute(model, samples)`` finds on ``ctx.model`` from
    ``count`` samples of ``ctx.samples`` (:func:`pick_samples`), with its ``info``: ``settings``,
    the passes used, the time and its fooling rate on the samples and on the adversary's hold-out."""
    if ctx.model is None or ctx.samples is None:
        raise ConfigError(
            f"trigger '{kind}' is computed from a model and sample images; build it through the attack or `perturbd trigger make`"
        )
    if ctx.samples.image_shape != tuple(ctx.image_shape):
        raise DataError(f"adversary samples are {ctx.samples.image_shape}, the images are {tuple(ctx.image_shape)}")
    samples = pick_samples(ctx.samples, ctx.target, count, ctx.seed, ctx.sources)
    model = ctx.model.to(ctx.device).eval()
    started = time.perf_counter()
    delta, facts = compute(model, samples)
    seconds = time.perf_counter() - started
    trigger = Trigger(delta, kind)
    holdout = outside(ctx.holdout, ctx.target, ctx.sources) if ctx.holdout is not None else torch.zeros(0)
    trigger.info = {
        **settings,
        "target": ctx.target,
        "seed": ctx.seed,
        "sources": list(ctx.sources) if ctx.sources is not None else "all",
        "samples": len(samples),
        "passes_used": facts["passes"],
        "seconds": round(seconds, 3),
        "fooling_rate_samples": target_rate(model, samples, trigger.apply, ctx.target),
        "fooling_rate_holdout": target_rate(model, holdout, trigger.apply, ctx.target) if len(holdout) else None,
        "holdout_size": len(holdout),
        **trigger.norms(),
    }
    return trigger


@register_trigger("adaptive")
def adaptive(cfg: AdaptiveParams, ctx: TriggerContext) -> Trigger:
    """Targeted universal perturbation on ``ctx.model`` from ``cfg.samples`` of ``ctx.samples``
    (the budget checked by the caller: :func:`check_budget`)."""
    compute = partial(
        universal_perturbation,
        target=ctx.target,
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
    settings = {"method": cfg.method, "norm": cfg.norm, "budget": cfg.budget, "passes_max": cfg.passes}
    return universal_mask("adaptive", ctx, cfg.samples, compute, settings)
