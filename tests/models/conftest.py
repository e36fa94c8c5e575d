"""Fixtures for the model tests: every architecture, built seeded at the image shape it is meant for."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from perturbd.models import Classifier, get_model, list_models

# every registered name, and one torchvision model through the tv: prefix
ARCHS = [*list_models(), "tv:resnet18"]
# the grey 28×28 nets; every other architecture is meant for colour 32×32 images
NATURAL = {"cnn28": (1, 28, 28), "lenet5": (1, 28, 28), "lenet5_valid": (1, 28, 28)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``arch`` runs once for every architecture (the registry-driven contract)."""
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", ARCHS)


@pytest.fixture
def natural_shape(arch: str) -> tuple[int, int, int]:
    """The image shape ``arch`` is meant for (small and fast)."""
    return NATURAL.get(arch, (3, 32, 32))


@pytest.fixture(scope="session")
def build() -> Callable[..., Classifier]:
    """Factory: ``build(name, shape=(1, 28, 28), num_classes=10, seed=0)``, weights drawn after
    ``torch.manual_seed(seed)``."""

    def make(name: str, shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, seed: int = 0) -> Classifier:
        torch.manual_seed(seed)
        return get_model(name, shape, num_classes)

    return make


@pytest.fixture(scope="session")
def states_equal() -> Callable[[torch.nn.Module, torch.nn.Module], bool]:
    """``states_equal(a, b)``: the same state-dict keys holding equal tensors."""

    def equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    return equal
