"""Fixtures for the trigger tests: a small CNN for 1×28×28 images."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn


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
