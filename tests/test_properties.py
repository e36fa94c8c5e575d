"""Property tests: the budget holds after rounding, poisoning is exact and never touches the
target class or the clean copy, metrics stay in [0, 1] (the trigger file round trip:
tests/triggers/test_base.py)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from perturbd.config import PoisonConfig
from perturbd.data.dataset import ImageDataset
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.poisoning import poison_count, poison_dataset
from perturbd.triggers import Trigger
from perturbd.triggers.adaptive import quantize

FAST = settings(max_examples=40, deadline=None)


def _images(seed: int, n: int, c: int = 1, side: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@FAST
@given(seed=st.integers(0, 10**6), budget=st.floats(1, 40), norm=st.sampled_from(["linf", "l2"]), scale=st.floats(0.1, 100))
def test_budget_holds_after_rounding_and_clipping(seed: int, budget: float, norm: str, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    delta = quantize(torch.randn(1, 6, 6, generator=gen) * scale, norm, budget)
    imgs = _images(seed, 16)
    moved = (Trigger(delta, "p").apply(imgs).double() - imgs.double()).flatten(1)
    bound = moved.abs().amax(1) if norm == "linf" else moved.norm(dim=1)
    assert float(bound.max()) <= budget + 1e-9


@FAST
@given(seed=st.integers(0, 10**6), n=st.integers(20, 300), rate=st.floats(0.01, 0.5), target=st.integers(0, 3))
def test_poisoning_is_exact_and_spares_target_and_clean_copy(seed: int, n: int, rate: float, target: int) -> None:
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    data = ImageDataset(_images(seed, n), labels, ("a", "b", "c", "d"), "prop")
    before = data.images.clone()
    eligible = int((labels != target).sum())
    count = poison_count(n, rate)
    if count < 1 or count > eligible:
        return
    p = poison_dataset(data, Trigger(torch.full((1, 6, 6), 3.0), "t"), PoisonConfig(rate=rate, target=target), seed)
    assert len(p.indices) == count == len(set(p.indices.tolist()))
    assert bool((labels[p.indices] != target).all())
    assert torch.equal(data.images, before) and torch.equal(data.labels, labels)
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[p.indices] = False
    assert torch.equal(p.dataset.images[untouched], before[untouched])


class _Random(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


@FAST
@given(seed=st.integers(0, 10**6), target=st.integers(0, 3), amp=st.floats(-50, 50))
def test_metrics_stay_in_unit_interval(seed: int, target: int, amp: float) -> None:
    labels = torch.arange(24) % 4
    data = ImageDataset(_images(seed, 24), labels, ("a", "b", "c", "d"), "prop")
    model = _Random(seed)
    for value in (clean_accuracy(model, data), attack_success_rate(model, data, Trigger(torch.full((1, 6, 6), amp), "t"), target)):
        assert 0.0 <= value <= 1.0 and not math.isnan(value)
