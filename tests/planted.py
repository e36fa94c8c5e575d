"""Fixtures of the defence and the evaluation tests (a pytest plugin that ``tests/conftest.py``
loads): tiny planted backdoors on the synthetic bars, built once per session.

Everything trains in seconds on one CPU thread with a 2-conv net. ``planted`` holds a model
backdoored with an obvious trigger (a 3×3 white patch, BadNets style, 3 % of the training set
relabelled to 0), its clean twin (same seed, no poison), the poisoned training set with its
indices, the test set and the defender's clean images (training images that were not poisoned);
its inputs carry the backdoored model's initial weights and recipe (for a training-time defence).
``planted_grid`` is the same with the paper's invisible grid mask (amplitude 30, 5 % poison).
``updates`` holds the two updates of the audit tests: the clean twin fine-tuned on a clean update
batch, and on the same batch with poison. (``run_dir``, a whole experiment run with defences, is in
the root ``conftest.py``.)
``mitigates`` checks that a mitigation lowers the planted backdoor's ASR and keeps accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from perturbd.config import DataConfig, PoisonConfig, TrainConfig, TriggerConfig
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.evaluation import DefenseInputs, DefenseReport, defender_clean_set, evaluate_defense
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.models import Classifier
from perturbd.poisoning import poison_dataset
from perturbd.train import fit
from perturbd.triggers import Trigger, TriggerContext, build_trigger

TARGET = 0
TRAIN = TrainConfig(epochs=4, batch_size=64, lr=0.05, device="cpu", threads=1)


class TinyNet(Classifier):
    """conv3×3(8) → BN → ReLU → pool, conv3×3(16) → BN → ReLU → pool, fc 32 (features), fc (head)."""

    def __init__(self, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(image_shape, num_classes)
        c = self.image_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(32, num_classes)


def tiny_model(shape: tuple[int, int, int], seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(shape, 10)


@dataclass(frozen=True)
class Planted:
    model: nn.Module
    clean_model: nn.Module
    trigger: Trigger
    train: ImageDataset
    indices: torch.Tensor
    test: ImageDataset
    clean: ImageDataset
    target: int = TARGET

    def inputs(
        self, model: nn.Module | None = None, before_model: nn.Module | None = None, clean_model: nn.Module | None = None
    ) -> DefenseInputs:
        return DefenseInputs(
            model or self.model, self.test, self.clean, "train minus poison", self.train, self.indices, self.trigger, self.target,
            clean_model or self.clean_model, before_model, initial_model=lambda: tiny_model(self.train.image_shape), train_config=TRAIN,
        )  # fmt: skip


@dataclass(frozen=True)
class Updates:
    """The clean twin (``before``) fine-tuned on a clean and on a poisoned update batch."""

    before: nn.Module
    clean_update: nn.Module
    poisoned_update: nn.Module


def _plant(kind: str, amplitude: float, rate: float) -> Planted:
    torch.set_num_threads(1)
    split = load_data(DataConfig(name="synthetic"), 0)
    trig = build_trigger(TriggerConfig(kind=kind, amplitude=amplitude), TriggerContext(split.train.image_shape, 0, TARGET))
    p = poison_dataset(split.train, trig, PoisonConfig(rate=rate, target=TARGET), 0)
    bad = tiny_model(split.train.image_shape)
    fit(bad, p.dataset, TRAIN, 0)
    good = tiny_model(split.train.image_shape)
    fit(good, split.train, TRAIN, 0)
    clean = defender_clean_set(p.dataset, p.indices, 0)
    return Planted(bad, good, trig, p.dataset, p.indices, split.test, clean)


def _updated(model: nn.Module, batch: ImageDataset, seed: int = 1) -> nn.Module:
    """``model`` fine-tuned on an update batch (2 epochs, lr 0.01), as in the update setting."""
    new = copy.deepcopy(model)
    fit(new, batch, TRAIN, seed, epochs=2, lr=0.01)
    return new


def _update_batches(trigger: Trigger, size: int = 1000, rate: float = 0.1) -> tuple[ImageDataset, ImageDataset]:
    """A clean update batch and the same batch with ``rate`` of it poisoned toward the target."""
    split = load_data(DataConfig(name="synthetic"), 0)
    batch = split.train.subset(torch.randperm(len(split.train), generator=torch.Generator().manual_seed(5))[:size])
    return batch, poison_dataset(batch, trigger, PoisonConfig(rate=rate, target=TARGET), 1).dataset


@pytest.fixture(scope="session")
def planted() -> Planted:
    """An obvious backdoor: 3×3 white patch, 3 % poison, target 0."""
    out = _plant("patch", 255, 0.03)
    assert attack_success_rate(out.model, out.test, out.trigger, TARGET) > 0.95
    assert attack_success_rate(out.clean_model, out.test, out.trigger, TARGET) < 0.2
    assert clean_accuracy(out.model, out.test) > 0.9
    return out


@pytest.fixture(scope="session")
def planted_grid() -> Planted:
    """The paper's invisible static mask: the grid at amplitude 30, 5 % poison, target 0."""
    out = _plant("grid", 30, 0.05)
    assert attack_success_rate(out.model, out.test, out.trigger, TARGET) > 0.95
    assert clean_accuracy(out.model, out.test) > 0.9
    return out


@pytest.fixture(scope="session")
def updates(planted: Planted) -> Updates:
    clean_batch, poisoned_batch = _update_batches(planted.trigger)
    return Updates(planted.clean_model, _updated(planted.clean_model, clean_batch), _updated(planted.clean_model, poisoned_batch))


@pytest.fixture
def mitigates(planted: Planted) -> Callable[[str, dict, float], DefenseReport]:
    """``mitigates(name, params, max_asr)``: evaluate the mitigation on the planted backdoor and
    check it brings the ASR from above 95 % to at most ``max_asr``, keeping clean accuracy."""

    def check(name: str, params: dict, max_asr: float) -> DefenseReport:
        r = evaluate_defense(build_defense(name, **params), planted.inputs())
        m = r.metrics
        assert m["asr_before"] > 0.95
        assert m["asr_after"] <= max_asr, r.cell["text"]
        assert m["clean_accuracy_after"] > 0.85
        assert r.clean_used == params["n_clean"]
        return r

    return check
