"""Dataset screening finds the poisoned training images of a planted backdoor."""

from __future__ import annotations

import pytest
import torch

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense


@pytest.mark.parametrize("name,min_auroc", [("spectral_signature", 0.75), ("activation_clustering", 0.75)])
def test_screening_ranks_poison_above_clean(planted, name: str, min_auroc: float) -> None:
    r = evaluate_defense(build_defense(name), planted.inputs())
    assert r.metrics["poisoned"] == len(planted.indices)
    assert r.metrics["auroc"] >= min_auroc, r.cell["text"]


def test_activation_clustering_flags_only_the_target_class(planted) -> None:
    d = build_defense("activation_clustering").fit(planted.model, planted.train)
    flagged_classes = {c for c, rep in d.class_report_.items() if rep["flagged"]}
    assert flagged_classes == {0}
    truth = torch.zeros(len(planted.train), dtype=torch.bool)
    truth[planted.indices] = True
    assert float(d.flagged_[truth].float().mean()) > 0.7
    assert float(d.flagged_[~truth].float().mean()) < 0.05


def test_activation_clustering_flags_nothing_on_clean_data(planted) -> None:
    clean_train = planted.train.subset(planted.clean.labels.new_tensor(sorted(set(range(len(planted.train))) - set(planted.indices.tolist()))))
    d = build_defense("activation_clustering").fit(planted.clean_model, clean_train)
    assert float(d.flagged_.float().mean()) < 0.05


def test_spectral_removes_multiplier_epsilon_per_class(planted) -> None:
    d = build_defense("spectral_signature", epsilon=0.1, multiplier=1.5).fit(planted.model, planted.train)
    counts = planted.train.counts()
    assert int(d.flagged_.sum()) == sum(int(0.15 * int(c)) for c in counts)
