"""Activation clustering splits off the planted poison of the target class, and nothing of clean data."""

from __future__ import annotations

import torch

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense


def test_ranks_poison_above_clean(planted) -> None:
    r = evaluate_defense(build_defense("activation_clustering"), planted.inputs())
    assert r.metrics["poisoned"] == len(planted.indices)
    assert r.metrics["auroc"] >= 0.75, r.cell["text"]


def test_flags_only_the_target_class(planted) -> None:
    d = build_defense("activation_clustering").fit(planted.model, planted.train)
    flagged_classes = {c for c, rep in d.class_report_.items() if rep["flagged"]}
    assert flagged_classes == {0}
    truth = torch.zeros(len(planted.train), dtype=torch.bool)
    truth[planted.indices] = True
    assert float(d.flagged_[truth].float().mean()) > 0.7
    assert float(d.flagged_[~truth].float().mean()) < 0.05


def test_flags_nothing_on_clean_data(planted) -> None:
    clean_train = planted.train.subset(planted.clean.labels.new_tensor(sorted(set(range(len(planted.train))) - set(planted.indices.tolist()))))
    d = build_defense("activation_clustering").fit(planted.clean_model, clean_train)
    assert float(d.flagged_.float().mean()) < 0.05
