"""Narcissus: a clean-label trigger optimised on target-class images (Zeng, Pan, Just, Lyu and Jia,
ACM CCS 2023, "Narcissus: A Practical Clean-Label Backdoor Attack with Limited Information"; code
``ruoxi-jia-group/Narcissus``, ``Narcissus.ipynb``).

Three stages, the paper's defaults in :class:`~perturbd.trigger_params.NarcissusParams`:

1. **Surrogate**: the adversary's model as ``attack.knowledge`` gives it (the same
   :func:`~perturbd.attack.plan.plan_attack` path as the adaptive mask): trained on the
   adversary's images of every class, target class included.
2. **Poison warm-up**: a copy of it fine-tuned on the adversary's target-class images only
   (``samples`` of them, labelled ``t``) for ``warmup_epochs`` epochs of RAdam at ``warmup_lr``,
   in train mode, batches of ``batch_size``.
3. **Trigger**: one perturbation ``u`` for every image, in the paper's units (images scaled to
   [−1, 1], so ``u = 2δ / 255``), optimised for ``epochs`` epochs over the same target-class
   images by RAdam at ``lr`` to *minimise* the cross-entropy toward ``t`` of
   ``clip(x + clip(u, ±2ξ/255))``; it stops early when a batch's gradient is exactly zero, as theirs.

Colour images are augmented in stages 2 and 3 as the authors' loaders do (random crop with 4
pixels of padding, horizontal flip: :func:`perturbd.data.augment.augment` ``crop_flip``); grey ones
are not (digits are not mirrored). The mask is rounded to whole grey levels and clamped to
``±floor(ξ)`` (:func:`~perturbd.triggers.adaptive.quantize`), so the budget holds on every poisoned
uint8 image. Its natural use is ``poison.mode: clean_label`` (the paper poisons target-class images
and keeps their labels); a dirty-label config runs too but is not the paper's attack.

A surrogate that already knows the target class (as perturbd's adversary's does) leaves the
warm-up with a target-class loss near zero, so the trigger's gradient is tiny and RAdam's first,
unrectified steps barely move it: short optimisations (a few epochs) can round to a zero mask; the
paper's 1,000 epochs are the default.

**Test-time magnification.** The paper tests with the trigger multiplied by 3 (``multi_test = 3``:
L∞ 48/255 at test for a 16/255 trigger in training). Here ``test_magnification`` (default 1, off):
perturbd compares triggers at equal visibility, and a trigger three times stronger at test than the
one whose PSNR was matched would not be compared at equal visibility; with it off, the ASR is
measured with the trigger the poisoned images carry. With it on, the trigger is a
:class:`Magnified` one: :meth:`~perturbd.triggers.base.Trigger.poison_copies` (poisoning, the
``trigger.psnr`` search, stealth) adds δ, :meth:`~perturbd.triggers.base.Trigger.apply` (every ASR,
every defence's triggered inputs) adds ``m·δ``.

Departures from the authors' code, each named:

- Surrogate: theirs is a ResNet-18 with 201 outputs trained 200 epochs on Tiny-ImageNet (a public
  out-of-distribution set, POOD) plus the target-class images. perturbd's adversary holds labelled
  images of the victim's own classes (the victim's under ``full``, disjoint auxiliary ones under
  ``none``), not a POOD set, so the surrogate is the adversary's model trained on all of them: its
  POOD part is the adversary's non-target images, in distribution.
- Trigger stage: their surrogate stays in train mode (batch statistics, running statistics
  updated as the trigger is optimised); here it is frozen in eval mode, so the trigger is
  optimised against the model as it classifies and the result depends only on the seed.
- Labels: their surrogate learns the target-class images as its extra 201st class (label 200),
  while the warm-up and the trigger use the CIFAR-10 label (``lab = 2``, a Tiny-ImageNet class of
  that surrogate); here there is one label space, and all three stages use the target class t.
- Target-class images: theirs are all the target class's training images; here at most
  ``samples`` of the adversary's, in a seeded choice, at least two (a warm-up batch of one image
  cannot train batch normalisation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.data.augment import augment, resolve_augment
from perturbd.data.dataset import to_float01
from perturbd.errors import ConfigError, DataError
from perturbd.metrics import outside, target_rate
from perturbd.models import frozen, model_device
from perturbd.progress import stage
from perturbd.seeding import derived_generator
from perturbd.trigger_params import NarcissusParams
from perturbd.triggers.adaptive import pick_samples, quantize
from perturbd.triggers.base import Trigger, TriggerContext, register_trigger


@dataclass
class Magnified(Trigger):
    """An additive trigger made stronger at test time: poisoned images get ``clip(x + δ)``
    (:meth:`poison_copies`), tested ones ``clip(x + m·δ)`` (:meth:`apply`), ``m = magnification``;
    ``delta`` holds δ as for an additive trigger (pixel units 0–255)."""

    magnification: float = 1.0
    family: ClassVar[str] = "magnified"

    def params(self) -> dict[str, Any]:
        return {"magnification": self.magnification}

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.magnification * self.delta.to(images.device, images.dtype) / 255.0

    def poison_copies(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        return Trigger(self.delta, self.kind, quantize=self.quantize).apply(images)


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A seeded order of ``n`` positions cut into batches of ``size``; a last batch of one image
    is dropped (batch normalisation cannot train on it)."""
    order = torch.randperm(n, generator=gen)
    out = [order[i : i + size] for i in range(0, n, size)]
    return out[:-1] if len(out) > 1 and len(out[-1]) == 1 else out


def warm_up(model: nn.Module, images: torch.Tensor, target: int, cfg: NarcissusParams, gen: torch.Generator) -> nn.Module:
    """A copy of ``model`` fine-tuned on uint8 ``images`` labelled ``target`` (the poison warm-up)."""
    model = copy.deepcopy(model)
    if cfg.warmup_epochs == 0:
        return model.eval()
    device = model_device(model)
    kind = resolve_augment("auto", images.shape[1])
    opt = torch.optim.RAdam(model.parameters(), lr=cfg.warmup_lr)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    with stage("Narcissus warm-up", cfg.warmup_epochs) as progress:
        for _ in range(cfg.warmup_epochs):
            for idx in _batches(len(images), cfg.batch_size, gen):
                x = augment(to_float01(images[idx].to(device)), kind, gen)
                loss = F.cross_entropy(model(x).float(), torch.full((len(x),), target, device=device))
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                opt.step()
            progress.advance(images=len(images))
    return model.eval()


def target_loss(model: nn.Module, images: torch.Tensor, target: int, delta: torch.Tensor | None = None) -> float:
    """Mean cross-entropy toward ``target`` of ``model`` (eval mode) on uint8 ``images``, with the
    mask ``delta`` (pixel units) added and rounded as a poisoned image file carries it."""
    device = model_device(model)
    x = images if delta is None else Trigger(delta, "narcissus").apply(images)
    with torch.no_grad():
        out = model.eval()(to_float01(x.to(device))).float()
    return float(F.cross_entropy(out, torch.full((len(x),), target, device=device)))


def optimise_trigger(
    model: nn.Module, images: torch.Tensor, target: int, cfg: NarcissusParams, gen: torch.Generator
) -> tuple[torch.Tensor, int]:
    """The trigger stage: δ ``(C, H, W)``, pixel units (unrounded, ``|δ| ≤ ξ``), and the epochs run."""
    device = model_device(model)
    kind = resolve_augment("auto", images.shape[1])
    radius = 2 * cfg.budget / 255.0  # the budget in the paper's [-1, 1] image units
    u = torch.zeros(1, *images.shape[1:], device=device, requires_grad=True)
    opt = torch.optim.RAdam([u], lr=cfg.lr)
    used = 0
    with frozen(model), stage("Narcissus trigger", cfg.epochs) as progress:
        for used in range(1, cfg.epochs + 1):  # noqa: B007 (the epochs used are read after the loop)
            for idx in _batches(len(images), cfg.batch_size, gen):
                x = augment(to_float01(images[idx].to(device)), kind, gen)
                poisoned = (x + u.clamp(-radius, radius) / 2).clamp(0.0, 1.0)
                loss = F.cross_entropy(model(poisoned).float(), torch.full((len(x),), target, device=device))
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                opt.step()
            progress.advance(images=len(images))
            if u.grad is None or not bool(u.grad.any()):
                break
    return (u.detach().clamp(-radius, radius)[0] * 255.0 / 2).cpu(), used


@register_trigger("narcissus", family=Magnified)  # its family for loading; with test_magnification 1 it is a plain mask
def narcissus(cfg: NarcissusParams, ctx: TriggerContext) -> Trigger:
    """Narcissus trigger on the adversary's model, from its target-class images (module docstring)."""
    if ctx.model is None or ctx.samples is None:
        raise ConfigError(
            "trigger 'narcissus' is computed from a model and sample images; build it through the attack or `perturbd trigger make`"
        )
    if ctx.samples.image_shape != tuple(ctx.image_shape):
        raise DataError(f"adversary samples are {ctx.samples.image_shape}, the images are {tuple(ctx.image_shape)}")
    pool = ctx.samples.images[ctx.samples.labels == ctx.target]
    if len(pool) < 2:
        raise DataError(
            f"the adversary has {len(pool)} image(s) of the target class {ctx.target}; Narcissus optimises on at least 2: give it more data"
        )
    gen = derived_generator(ctx.seed, "narcissus")
    images = pool[torch.randperm(len(pool), generator=gen)[: cfg.samples].sort().values]
    model = ctx.model.to(ctx.device).eval()
    started = time.perf_counter()
    surrogate = warm_up(model, images, ctx.target, cfg, gen)
    delta, used = optimise_trigger(surrogate, images, ctx.target, cfg, gen)
    delta = quantize(delta, "linf", cfg.budget)
    seconds = time.perf_counter() - started
    info: dict[str, Any] = {
        "method": "narcissus",
        "norm": "linf",
        "budget": cfg.budget,
        "target": ctx.target,
        "seed": ctx.seed,
        "samples": len(images),
        "warmup_epochs": cfg.warmup_epochs,
        "passes_used": used,
        "passes_max": cfg.epochs,
        "seconds": round(seconds, 3),
        "target_loss_clean": target_loss(surrogate, images, ctx.target),
        "target_loss": target_loss(surrogate, images, ctx.target, delta),
        "test_magnification": cfg.test_magnification,
    }
    if cfg.test_magnification == 1:
        trigger = Trigger(delta, "narcissus", info)
    else:
        trigger = Magnified(delta, "narcissus", info, magnification=cfg.test_magnification)
    others = pick_samples(ctx.samples, ctx.target, 1000, ctx.seed, ctx.sources)
    holdout = outside(ctx.holdout, ctx.target, ctx.sources) if ctx.holdout is not None else torch.zeros(0)
    trigger.info |= {
        "fooling_rate_samples": target_rate(model, others, trigger.apply, ctx.target),
        "fooling_rate_holdout": target_rate(model, holdout, trigger.apply, ctx.target) if len(holdout) else None,
        "holdout_size": len(holdout),
        **Trigger(delta, "narcissus").norms(),
    }
    return trigger
