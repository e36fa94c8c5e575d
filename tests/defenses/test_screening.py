"""Dataset screening finds the poisoned training images of a planted backdoor."""

from __future__ import annotations

import pytest
import torch

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense


@pytest.mark.parametrize(
    "name,params,min_auroc",
    [
        ("spectral_signature", {}, 0.75),
        ("spectral_signature", {"components": 5}, 0.75),
        ("activation_clustering", {}, 0.75),
    ],
)
def test_screening_ranks_poison_above_clean(planted, name: str, params: dict, min_auroc: float) -> None:
    r = evaluate_defense(build_defense(name, **params), planted.inputs())
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


def test_spectral_top_k_score_is_the_squared_projection_on_k_directions(planted) -> None:
    from perturbd.defenses.base import penultimate

    d = build_defense("spectral_signature", components=2).fit(planted.model, planted.train)
    idx = torch.nonzero(planted.train.labels == 0).flatten()
    feats = penultimate(planted.model, planted.train.images[idx]).double()
    centred = feats - feats.mean(0)
    vh = torch.linalg.svd(centred, full_matrices=False).Vh
    s = (centred @ vh[0]) ** 2 + (centred @ vh[1]) ** 2
    assert torch.allclose(d.scores_[idx].double(), s / s.median(), rtol=1e-4)
