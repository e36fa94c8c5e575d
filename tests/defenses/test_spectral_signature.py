"""Spectral signatures rank the planted poison above clean images and remove ε·multiplier per class."""

from __future__ import annotations

import pytest
import torch

from perturbd.defenses import build_defense
from perturbd.defenses.base import penultimate
from perturbd.evaluation.harness import evaluate_defense


@pytest.mark.parametrize("params", [{}, {"components": 5}], ids=["k=1", "k=5"])
def test_ranks_poison_above_clean(planted, params: dict) -> None:
    r = evaluate_defense(build_defense("spectral_signature", **params), planted.inputs())
    assert r.metrics["poisoned"] == len(planted.indices)
    assert r.metrics["auroc"] >= 0.75, r.cell["text"]


def test_removes_multiplier_epsilon_per_class(planted) -> None:
    d = build_defense("spectral_signature", epsilon=0.1, multiplier=1.5).fit(planted.model, planted.train)
    counts = planted.train.counts()
    assert int(d.flagged_.sum()) == sum(int(0.15 * int(c)) for c in counts)


def test_top_k_score_is_the_squared_projection_on_k_directions(planted) -> None:
    d = build_defense("spectral_signature", components=2).fit(planted.model, planted.train)
    idx = torch.nonzero(planted.train.labels == 0).flatten()
    feats = penultimate(planted.model, planted.train.images[idx]).double()
    centred = feats - feats.mean(0)
    vh = torch.linalg.svd(centred, full_matrices=False).Vh
    s = (centred @ vh[0]) ** 2 + (centred @ vh[1]) ** 2
    assert torch.allclose(d.scores_[idx].double(), s / s.median(), rtol=1e-4)
