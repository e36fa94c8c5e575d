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
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit
from perturbd.poison import sources_of
from perturbd.train import Monitor
from perturbd.triggers import Trigger, TriggerContext, build_trigger, needs_model
from perturbd.triggers.adaptive import check_budget
from perturbd.twins import TwinStore


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
    """Build the trigger the adversary would build, given what it knows (reads ``split.train`` only)."""
    shape, target = split.train.image_shape, cfg.poison.target
    if not needs_model(cfg.trigger.kind):
        trigger = build_trigger(cfg.trigger, TriggerContext(shape, cfg.seed, target, device=device))
        return AttackPlan(replace(trigger, quantize=cfg.poison.quantize), {"knowledge": cfg.attack.knowledge, "model": None, "data": None, "trigger": trigger.info})
    check_budget(cfg.trigger.norm, cfg.trigger.budget)  # before the adversary trains anything
    adversary = prepare_adversary(cfg, split.train, part, device, twins, monitor)
    trigger = adaptive_mask(cfg, adversary, device)
    return AttackPlan(replace(trigger, quantize=cfg.poison.quantize), {**adversary.record, "trigger": trigger.info})


def adaptive_mask(cfg: ExperimentConfig, adversary: Adversary, device: torch.device) -> Trigger:
    """The mask ``cfg.trigger`` computed on the adversary's model and samples (several masks of
    one adversary, as an experiment compares them, each from this)."""
    sources = sources_of(cfg.poison)
    ctx = TriggerContext(
        adversary.samples.image_shape, cfg.seed, cfg.poison.target, adversary.model, adversary.samples, adversary.holdout, device,
        tuple(sources) if sources is not None else None,
    )
    return build_trigger(cfg.trigger, ctx)
