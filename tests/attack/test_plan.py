"""The attack plan: static masks need no model; an adaptive budget is checked before any training."""

from __future__ import annotations

import pytest
import torch

from perturbd.attack import partition, plan_attack
from perturbd.config import load_config
from perturbd.errors import ConfigError
from perturbd.runs.twins import TwinStore


def test_static_triggers_train_nothing_and_keep_the_victim_off_the_auxiliary_data(split, train_only, monkeypatch) -> None:
    monkeypatch.setattr("perturbd.attack.adversary.fit", lambda *a, **k: pytest.fail("a static trigger trained a model"))
    cfg = load_config(overrides=["data.name=synthetic", "attack.knowledge=none"])
    part = partition(cfg, split.train.labels, 10)
    plan = plan_attack(cfg, train_only, part, torch.device("cpu"), TwinStore())
    assert plan.trigger.kind == "grid" and plan.record["model"] is None and plan.record["knowledge"] == "none"
    assert len(part.victim) == 400


def test_a_budget_below_one_grey_level_fails_before_the_adversary_trains(split, train_only, fast, monkeypatch) -> None:
    monkeypatch.setattr("perturbd.attack.adversary.fit", lambda *a, **k: pytest.fail("trained before checking the budget"))
    cfg = load_config(overrides=[*fast, "attack.knowledge=none", "trigger.budget=0.5"])
    with pytest.raises(ConfigError, match="below one grey level"):
        plan_attack(cfg, train_only, partition(cfg, split.train.labels, 10), torch.device("cpu"), TwinStore())
