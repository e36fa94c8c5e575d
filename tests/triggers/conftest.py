"""Fixtures for the trigger tests: a small CNN for 1×28×28 images, and a learnability check on an mnist5k slice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from perturbd.config import PoisonConfig, TrainConfig, load_config
from perturbd.data import DataSplit, load_data
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.models import get_model
from perturbd.poisoning import poison_dataset
from perturbd.train import fit
from perturbd.triggers import Trigger


@pytest.fixture(scope="session")
def small_cnn() -> Callable[[int], nn.Module]:
    """Factory: ``small_cnn(seed)``, a two-conv CNN for 1×28×28 images (10 classes), its weights
    drawn after ``torch.manual_seed(seed)``; about 9,000 parameters, fast on the CPU."""

    def build(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
        )  # fmt: skip

    return build


LEARN_TRAIN = TrainConfig(epochs=6, batch_size=64, lr=0.05, device="cpu")


@pytest.fixture(scope="session")
def mnist_slice() -> DataSplit:
    """mnist5k, 1,000 training and 300 test images: a learnability check in seconds."""
    return load_data(load_config(overrides=["data.name=mnist5k", "data.train_limit=1000", "data.test_limit=300"]).data, seed=0)


@pytest.fixture(scope="session")
def clean_cnn28(mnist_slice: DataSplit) -> nn.Module:
    """cnn28 trained on the clean slice for :data:`LEARN_TRAIN`'s epochs (the clean twin of :func:`learns`)."""
    torch.manual_seed(0)
    model = get_model("cnn28", (1, 28, 28), 10)
    fit(model, mnist_slice.train, LEARN_TRAIN, seed=0)
    return model.eval()


@pytest.fixture
def learns(mnist_slice: DataSplit, clean_cnn28: nn.Module) -> Callable[..., dict[str, float]]:
    """``learns(trigger, epochs)``: cnn28 trained on the slice with 10 % of it poisoned toward 0;
    its ASR and clean accuracy, and the ASR of the trigger on the clean twin."""

    def check(trigger: Trigger, epochs: int = LEARN_TRAIN.epochs) -> dict[str, float]:
        poisoned = poison_dataset(mnist_slice.train, trigger, PoisonConfig(rate=0.1, target=0), seed=0)
        torch.manual_seed(0)
        model = get_model("cnn28", (1, 28, 28), 10)
        fit(model, poisoned.dataset, LEARN_TRAIN, seed=0, epochs=epochs)
        model.eval()
        return {
            "asr": attack_success_rate(model, mnist_slice.test, trigger, 0),
            "accuracy": clean_accuracy(model, mnist_slice.test),
            "clean_model_asr": attack_success_rate(clean_cnn28, mnist_slice.test, trigger, 0),
        }

    return check
