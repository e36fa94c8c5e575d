"""What an attack setting is: how the clean twin and the backdoored model come to be.

A setting (``attack.setting``) is a class with two methods, registered by name:
``check(cfg, split, part, twins)`` raises a one-line error before any work for what only it can
check (the partition has already checked every size; a model it reads, it reads through the run's
``twins``, so that the run reads it once), and ``train(ctx) -> Trained`` trains the clean twin and
the backdoored model of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn as nn

from perturbd.attack import AttackPlan, Partition
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit
from perturbd.poisoning import PoisonedSet
from perturbd.progress import Log
from perturbd.registry import Registry
from perturbd.runs.twins import TwinStore
from perturbd.train import Monitor


@dataclass
class Trained:
    """What a setting hands back.

    Attributes:
        clean: the clean twin; backdoored: the model trained with the poison.
        poisoned: the poisoned set (the victim's data, or the update batch).
        before: the update setting's pre-update model (``None`` otherwise).
        facts: extra parts of the run's metrics, by name (``before_update``, ``update``).
        seconds: training time per stage.
    """

    clean: nn.Module
    backdoored: nn.Module
    poisoned: PoisonedSet
    before: nn.Module | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Context:
    """Everything a setting may use: the run's config, data, partition and plan, where to train,
    and the clean models it shares with the adversary."""

    cfg: ExperimentConfig
    split: DataSplit
    part: Partition
    plan: AttackPlan
    device: torch.device
    twins: TwinStore
    monitor: Monitor
    log: Log


class Setting(Protocol):
    """One of the paper's attack settings."""

    def check(self, cfg: ExperimentConfig, split: DataSplit, part: Partition, twins: TwinStore) -> None: ...
    def train(self, ctx: Context) -> Trained: ...


SETTINGS: Registry[type[Setting]] = Registry("attack setting")


def register_setting(name: str) -> Callable[[type[Setting]], type[Setting]]:
    """Class decorator: register a setting under ``name`` (a duplicate raises ``ValueError``)."""
    return SETTINGS.register(name)


def get_setting(name: str) -> Setting:
    """The setting called ``name``; a one-line ConfigError with a suggestion if unknown."""
    return SETTINGS.get(name)()


def list_settings(pattern: str = "*") -> list[str]:
    return SETTINGS.names(pattern)
