"""The attack's plan: the trigger the adversary builds with what it knows, and its record.

Static masks need no model. Adaptive masks are computed on the adversary's model and samples
(:mod:`perturbd.attack.adversary`), which depend on ``attack.knowledge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from perturbd.attack.adversary import Adversary, prepare_adversary
from perturbd.attack.partition import Partition
from perturbd.attack.visibility import at_psnr
from perturbd.config import ExperimentConfig, TriggerConfig
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.poisoning import sources_of
from perturbd.runs.twins import TwinStore, mask_key
from perturbd.seeding import derived_generator
from perturbd.train import Monitor
from perturbd.triggers import Trigger, TriggerContext, build_trigger, needs_model
from perturbd.triggers.adaptive import check_budget, pick_samples

VISIBILITY_IMAGES = 2000


@dataclass
class AttackPlan:
    """What the attack hands to the settings.

    Attributes:
        trigger: the mask to inject, applied as ``poison.quantize`` says (in training and testing).
        record: what the adversary used (knowledge, data, model, mask statistics); written to
            ``adversary.json``.
    """

    trigger: Trigger
    record: dict[str, Any] = field(default_factory=dict)


def plan_attack(
    cfg: ExperimentConfig, split: DataSplit, part: Partition, device: torch.device, twins: TwinStore, monitor: Monitor | None = None
) -> AttackPlan:
    """Build the trigger the adversary would build, given what it knows (reads ``split.train`` only).

    With ``trigger.psnr`` (``ssim``) the trigger's strength is searched so that its poisoned images
    have that mean PSNR (SSIM), measured on up to :data:`VISIBILITY_IMAGES` of the adversary's own images
    (:mod:`perturbd.attack.visibility`)."""
    shape, target, quantize = split.train.image_shape, cfg.poison.target, cfg.poison.quantize
    if not needs_model(cfg.trigger.kind):
        own = part.take(split.train, part.fit)

        def static(tc: TriggerConfig) -> Trigger:
            return replace(build_trigger(tc, TriggerContext(shape, cfg.seed, target, device=device, quantize=quantize)), quantize=quantize)

        trigger = at_psnr(cfg.trigger, static, _visibility_images(cfg, own), cfg.seed)
        return AttackPlan(trigger, {"knowledge": cfg.attack.knowledge, "model": None, "data": None, "trigger": trigger.info})
    check_budget(cfg.trigger.norm, cfg.trigger.budget)  # before the adversary trains anything

    def plan() -> tuple[Trigger, dict[str, Any]]:
        adversary = prepare_adversary(cfg, split.train, part, device, twins, monitor)

        def adaptive(tc: TriggerConfig) -> Trigger:
            return adaptive_mask(cfg.model_copy(update={"trigger": tc}), adversary, device)

        trigger = at_psnr(cfg.trigger, adaptive, _visibility_images(cfg, adversary.samples), cfg.seed)
        return trigger, {**adversary.record, "trigger": trigger.info}

    trigger, record = twins.mask(mask_key(cfg, split.train, device), plan)
    return AttackPlan(replace(trigger, quantize=quantize), record)


def _visibility_images(cfg: ExperimentConfig, own: ImageDataset) -> torch.Tensor:
    """The adversary's images a ``trigger.psnr`` (``ssim``) search measures: a seeded sample of those
    it may poison (of the target class, for ``poison.mode: clean_label``)."""
    if cfg.trigger.psnr is None and cfg.trigger.ssim is None:
        return torch.zeros(0, dtype=torch.uint8)
    if cfg.poison.mode == "clean_label":
        pool = own.images[own.labels == cfg.poison.target]
        keep = torch.randperm(len(pool), generator=derived_generator(cfg.seed, "visibility"))[:VISIBILITY_IMAGES].sort().values
        return pool[keep]
    return pick_samples(own, cfg.poison.target, VISIBILITY_IMAGES, cfg.seed, sources_of(cfg.poison))


def adaptive_mask(cfg: ExperimentConfig, adversary: Adversary, device: torch.device) -> Trigger:
    """The mask ``cfg.trigger`` computed on the adversary's model and samples (several masks of
    one adversary, as an experiment compares them, each from this)."""
    sources = sources_of(cfg.poison)
    ctx = TriggerContext(
        adversary.samples.image_shape,
        cfg.seed,
        cfg.poison.target,
        adversary.model,
        adversary.samples,
        adversary.holdout,
        device,
        tuple(sources) if sources is not None else None,
    )
    return build_trigger(cfg.trigger, ctx)
