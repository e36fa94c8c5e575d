"""The paper's attack settings: how the clean twin and the backdoored model come to be.

A setting is a function ``Context -> Trained`` registered by name (``attack.setting``):
``before_training`` here, ``update`` in :mod:`perturbd.update`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from perturbd.attack import AttackPlan
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit
from perturbd.models import get_model
from perturbd.poison import PoisonedSet, choose_indices, poison_dataset
from perturbd.registry import Registry
from perturbd.train import Monitor, fit
from perturbd.twins import shared_twin

Log = Callable[[str], None]


@dataclass
class Trained:
    """What a setting hands back: the clean twin, the backdoored model, the poison, extras."""

    clean: nn.Module
    backdoored: nn.Module
    poisoned: PoisonedSet
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Context:
    """Everything a setting may use."""

    cfg: ExperimentConfig
    split: DataSplit
    plan: AttackPlan
    device: torch.device
    monitor: Monitor
    log: Log
    twin_cache: Path | None = None  # folder of shared clean twins (sweeps); None: always train


Setting = Callable[[Context], Trained]
_SETTINGS: Registry[Setting] = Registry("attack setting")
register_setting = _SETTINGS.register


def new_model(ctx: Context) -> nn.Module:
    """The victim architecture, initialised from the run seed (the twin and the backdoored model
    start from the same weights)."""
    torch.manual_seed(ctx.cfg.seed)
    return get_model(ctx.cfg.model.name, ctx.split.train.image_shape, ctx.split.train.num_classes)


@register_setting("before_training")
def before_training(ctx: Context) -> Trained:
    """The paper's first setting: the poison is part of the training set of a model trained from scratch."""
    cfg = ctx.cfg
    poisoned = poison_dataset(ctx.plan.victim_train, ctx.plan.trigger, cfg.poison, cfg.seed)
    ctx.log(f"poisoned {len(poisoned.indices)} of {len(poisoned.dataset)} training images (rate {poisoned.injection_rate:.4f}) → label {cfg.poison.target}")
    clean, twin_seconds = clean_twin(ctx)
    backdoored = new_model(ctx)
    bad = fit(backdoored, poisoned.dataset, cfg.train, cfg.seed, monitor=ctx.monitor, description="backdoored")
    ctx.log(f"trained backdoored model in {bad.seconds:.1f} s ({bad.images_per_s:.0f} img/s)")
    return Trained(clean, backdoored, poisoned, seconds={"train_clean": twin_seconds, "train_backdoored": bad.seconds})


def clean_twin(ctx: Context) -> tuple[nn.Module, float]:
    """The clean twin: the victim architecture trained on the victim's clean data with the run
    seed and train config. Returns the model and the seconds spent training it.

    With ``ctx.twin_cache`` the twin is trained once per (model, training, seed, victim data) and
    shared through that folder (:mod:`perturbd.twins`); a reused twin reports 0 s.

    Under knowledge ``full`` the adversary already trained exactly this model
    (:attr:`AttackPlan.clean_model`: same seed, data and training); it is reused, 0 s."""
    if ctx.plan.clean_model is not None:
        ctx.log("clean twin: the adversary's model (knowledge full: same seed, data and training)")
        return ctx.plan.clean_model, 0.0
    model = new_model(ctx)
    with shared_twin(ctx.twin_cache, ctx.cfg, ctx.plan.victim_train, model, ctx.device) as twin:
        if twin.cached:
            ctx.log(f"clean twin: reused {twin.folder} (same data, model, training and seed; trained once)")
            return model, 0.0
        result = fit(model, ctx.plan.victim_train, ctx.cfg.train, ctx.cfg.seed, monitor=ctx.monitor, description="clean twin")
        twin.store(result.seconds)
    ctx.log(f"trained clean twin in {result.seconds:.1f} s ({result.images_per_s:.0f} img/s)")
    return model, result.seconds


def get_setting(name: str) -> Setting:
    return _SETTINGS.get(name)


Check = Callable[[ExperimentConfig, DataSplit], None]
_CHECKS: dict[str, Check] = {}


def register_check(name: str) -> Callable[[Check], Check]:
    """Register the up-front check of setting ``name``: it raises a one-line error before any work."""

    def add(fn: Check) -> Check:
        _CHECKS[name] = fn
        return fn

    return add


def check_setting(cfg: ExperimentConfig, split: DataSplit) -> None:
    """Run the check of ``cfg.attack.setting`` (if it has one) on the loaded data."""
    check = _CHECKS.get(cfg.attack.setting)
    if check is not None:
        check(cfg, split)


@register_check("before_training")
def _check_before_training(cfg: ExperimentConfig, split: DataSplit) -> None:
    """The poison fits the victim's training set (what is left of it after any auxiliary data)."""
    from perturbd.knowledge import victim_train

    choose_indices(victim_train(cfg, split).labels, cfg.poison, cfg.seed)
