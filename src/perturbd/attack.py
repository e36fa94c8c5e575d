"""The adversary: what it knows, the model it computes a mask on, and the trigger it builds.

Static masks need no model. Adaptive masks are computed on the model the adversary has, which
depends on ``attack.knowledge`` (see :data:`KNOWLEDGE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.train import Monitor
from perturbd.triggers import Trigger, TriggerContext, build_trigger, needs_model


@dataclass
class AttackPlan:
    """What the attack hands to the experiment.

    Attributes:
        trigger: the mask to inject.
        victim_train: the data the victim trains on (never the adversary's auxiliary data).
        info: what the adversary used (data, model, mask statistics); written to ``adversary.json``.
        clean_model: under knowledge ``full`` only, the adversary's model, which is the victim's
            clean model (same architecture, seed, data and training): the clean twin
            (``before_training``) or the pre-update model (``update``), so it is not trained twice.
    """

    trigger: Trigger
    victim_train: ImageDataset
    info: dict[str, Any] = field(default_factory=dict)
    clean_model: nn.Module | None = None


def plan_attack(cfg: ExperimentConfig, split: DataSplit, device: torch.device, monitor: Monitor | None = None) -> AttackPlan:
    """Build the trigger the adversary would build, given what it knows."""
    ctx = TriggerContext(split.train.image_shape, cfg.seed, cfg.poison.target, device=device)
    if needs_model(cfg.trigger.kind):
        from perturbd.knowledge import plan_adaptive

        return plan_adaptive(cfg, split, ctx, monitor)
    from perturbd.knowledge import victim_train

    trigger = build_trigger(cfg.trigger, ctx)
    info = {"knowledge": cfg.attack.knowledge, "model": None, "data": None, "trigger": trigger.info}
    return AttackPlan(trigger, victim_train(cfg, split), info)
