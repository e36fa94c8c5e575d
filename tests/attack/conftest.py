"""A synthetic training split whose test set the adversary must never read."""

from __future__ import annotations

import pytest

from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.data.dataset import DataSplit, ImageDataset

# an adaptive mask in about a second: 40 samples, one pass of short DeepFool steps
ADAPTIVE = ["data.train_limit=500", "trigger.kind=adaptive", "trigger.samples=40", "trigger.passes=1", "trigger.max_steps=2",
            "trigger.budget=10", "poison.target=3", "attack.surrogate_steps=10"]  # fmt: skip


class TrainOnly:
    """A split whose test set cannot be read: the adversary must never touch it."""

    def __init__(self, split: DataSplit) -> None:
        self.train = split.train

    @property
    def test(self) -> ImageDataset:
        raise AssertionError("the adversary read the test set")


@pytest.fixture(scope="module")
def split() -> DataSplit:
    return load_data(load_config(overrides=["data.name=synthetic", "data.train_limit=500"]).data, seed=0)


@pytest.fixture
def fast(synthetic_overrides: list[str]) -> list[str]:
    """Overrides for an adaptive mask in about a second."""
    return [*synthetic_overrides, *ADAPTIVE]


@pytest.fixture(scope="module")
def train_only(split: DataSplit) -> TrainOnly:
    """``split`` with a test set that fails the test when read."""
    return TrainOnly(split)
