"""The before-training setting: the twin and the backdoored model differ only by the poison."""

from __future__ import annotations

import torch

from perturbd.attack import partition, plan_attack
from perturbd.attack.settings import Context, get_setting
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.models import get_model
from perturbd.runs.twins import TwinStore
from perturbd.train import SilentMonitor, fit


def test_twin_and_backdoored_model_start_alike_and_train_on_victim_data_with_and_without_poison(synthetic_overrides) -> None:
    cfg = load_config(overrides=[*synthetic_overrides, "data.train_limit=400", "poison.rate=0.05", "attack.knowledge=none"])
    split = load_data(cfg.data, cfg.seed)
    cpu = torch.device("cpu")
    part = partition(cfg, split.train.labels, 10)
    twins = TwinStore()
    plan = plan_attack(cfg, split, part, cpu, twins)
    logs: list[str] = []
    trained = get_setting("before_training").train(Context(cfg, split, part, plan, cpu, twins, SilentMonitor(), logs.append))
    victim = part.take(split.train, part.victim)
    assert len(trained.poisoned.dataset) == len(victim) == 320 and torch.equal(trained.poisoned.indices, part.poison)
    twin = get_model(cfg.model.name, (1, 28, 28), 10, seed=cfg.seed)
    fit(twin, victim, cfg.train, cfg.seed)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), trained.clean.state_dict().values())), (
        "the twin: victim data, run seed"
    )
    bad = get_model(cfg.model.name, (1, 28, 28), 10, seed=cfg.seed)
    fit(bad, trained.poisoned.dataset, cfg.train, cfg.seed)
    assert all(torch.equal(a, b) for a, b in zip(bad.state_dict().values(), trained.backdoored.state_dict().values()))
    assert trained.before is None and not trained.facts and any("clean twin: trained" in line for line in logs)
