"""Spectral signatures rank the planted poison above clean images and remove ε·multiplier per class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.base import penultimate
from perturbd.errors import ConfigError
from perturbd.evaluation import DefenseInputs
from perturbd.evaluation.detection import auroc
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


class Flat(nn.Module):
    """A model whose penultimate features are its input's pixels: the tests choose the features."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dims, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def separable(share: float, n: int = 200, dims: int = 8, seed: int = 0) -> tuple[ImageDataset, torch.Tensor]:
    """Class 0 (the target) of ``n`` images, ``share`` of them poisoned, and a clean class 1 of
    ``n``: clean features 0.2 + N(0, 0.02²) per dimension, the poison 0.5 farther along the first
    (ReLU-like: the poison adds activation); perfectly separable. The poison's indices."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.02 * torch.randn(2 * n, dims, generator=gen)
    poison = torch.arange(round(share * n))
    x[poison, 0] += 0.5
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    return ImageDataset(x.float().view(2 * n, dims, 1, 1), labels, ("t", "other")), poison


def _class0_auroc(scoring: str, share: float) -> float:
    data, poison = separable(share)
    d = build_defense("spectral_signature", scoring=scoring).fit(Flat(8), data)
    truth = torch.zeros(len(data), dtype=torch.bool)
    truth[poison] = True
    cls0 = data.labels == 0
    value = auroc(truth[cls0], d.scores_[cls0])
    assert value is not None
    return value


def test_the_centred_score_cannot_tell_half_a_class_from_the_other_half() -> None:
    assert _class0_auroc("centred", 0.09) > 0.99, "a small share: the paper's score separates it"
    assert 0.35 < _class0_auroc("centred", 0.5) < 0.65, "half the class: symmetric about the mean, chance"
    assert _class0_auroc("authors", 0.5) > 0.95, "the uncentred projection ranks by position along v"
    assert _class0_auroc("authors", 0.09) > 0.95


def test_the_defaults_are_the_papers() -> None:
    d = build_defense("spectral_signature")
    assert (d.components, d.scoring, d.multiplier, d.epsilon_source) == (1, "centred", 1.5, "given")


def test_the_authors_score_projects_the_uncentred_features(planted) -> None:
    d = build_defense("spectral_signature", scoring="authors").fit(planted.model, planted.train)
    idx = torch.nonzero(planted.train.labels == 0).flatten()
    feats = penultimate(planted.model, planted.train.images[idx]).double()
    v = torch.linalg.svd(feats - feats.mean(0), full_matrices=False).Vh[0]
    s = (feats @ v) ** 2
    assert torch.allclose(d.scores_[idx].double(), s / s.median(), rtol=1e-4)


def _inputs(data: ImageDataset, poison: torch.Tensor | None) -> DefenseInputs:
    return DefenseInputs(Flat(8), data, data, "test", data, poison, None, 0)


def test_the_report_gives_the_poisoned_share_beside_the_auroc() -> None:
    data, poison = separable(0.5)
    r = evaluate_defense(build_defense("spectral_signature"), _inputs(data, poison))
    assert r.metrics["poisoned_share"] == {"0": 0.5} and r.metrics["target_share"] == 0.5 and r.metrics["target_label"] == 0
    assert r.cell["text"].endswith("; class 0 50 % poisoned")


def test_oracle_epsilon_is_the_targets_true_share() -> None:
    data, poison = separable(0.25)
    r = evaluate_defense(build_defense("spectral_signature", epsilon_source="oracle"), _inputs(data, poison))
    assert r.params["epsilon"] == 0.25
    assert r.metrics["flagged"] == 2 * int(1.5 * 0.25 * 200), "1.5 ε n_c in every class"
    with pytest.raises(ConfigError, match=r"^spectral_signature.epsilon_source=oracle needs the run's poison indices"):
        evaluate_defense(build_defense("spectral_signature", epsilon_source="oracle"), _inputs(data, None))
