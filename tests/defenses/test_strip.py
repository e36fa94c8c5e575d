"""STRIP as Gao et al. run it: blends are plain sums, entropy in bits over N blends, a threshold
from a normal fit of clean entropies; it separates triggered inputs on a backdoored model only."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch
from torch import nn

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.strip import Strip
from perturbd.evaluation.harness import evaluate_defense

# 200 clean images, 8 overlays, 200 test images: over 4 seeds (the defender's clean order and the
# test sample) AUROC 0.955–0.966, TPR at 5 % FPR 0.80–0.86, the clean twin's AUROC 0.47–0.52; the
# normal fit's 1 % threshold lies below every entropy (TPR 0 at it): the cell shows both points
FAST = {"n_clean": 200, "overlays": 8}


class Recorder(nn.Module):
    """Uniform predictions over ``k`` labels; keeps the largest input value it saw."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.k, self.seen = k, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = max(self.seen, float(x.max()))
        return torch.zeros(len(x), self.k)


def _bright(n: int = 8) -> ImageDataset:
    return ImageDataset(torch.full((n, 1, 4, 4), 200, dtype=torch.uint8), torch.arange(n) % 2, ("a", "b"), "bright")


def test_defaults_are_gaos() -> None:
    d = Strip()
    assert (d.blend, d.overlays, d.frr) == ("add", 100, 0.01)


def test_add_blend_is_an_unclipped_sum_and_entropy_is_in_bits_per_blend() -> None:
    model = Recorder(k=4)
    d = Strip(overlays=3, n_clean=8).fit(model, _bright())
    assert model.seen == pytest.approx(2 * 200 / 255), "x + x_clean, not clipped to 1"
    assert torch.allclose(d.entropy(_bright().images), torch.full((8,), 2.0)), "uniform over 4 labels: 2 bits"
    averaged = Recorder()
    Strip(overlays=3, n_clean=8, blend="average", alpha=0.5).fit(averaged, _bright())
    assert averaged.seen == pytest.approx(200 / 255)


def test_threshold_is_the_normal_fit_quantile_of_clean_entropies(planted) -> None:
    d = build_defense("strip", frr=0.1, n_clean=200, overlays=8).fit(planted.model, planted.clean)
    entropy = -d.scores_.double()
    expected = NormalDist(float(entropy.mean()), float(entropy.std(unbiased=False))).inv_cdf(0.1)
    assert d.threshold_ == pytest.approx(expected)
    assert torch.equal(d.flagged_, entropy < d.threshold_)
    assert d.clean_used_ == 200 and len(d.scores_) == 100, "half overlay pool, half calibration"
    images = planted.clean.images[:50]
    assert torch.equal(d.flag(images), d.flag_scores(d.score(images))), "flags from the scores, same overlays"


def test_strip_separates_triggered_inputs(planted) -> None:
    r = evaluate_defense(build_defense("strip", **FAST), planted.inputs(), eval_limit=200)
    m = r.metrics
    assert m["auroc"] > 0.9 and m["tpr_at_5_fpr"] > 0.6, r.cell["text"]
    assert 0 <= m["tpr"] <= 1 and m["fpr"] < 0.1
    assert m["clean_model"]["auroc"] < 0.75, "a clean model gives STRIP nothing to find"
    assert r.clean_used == 200 and m["test_images"] == 200
    assert r.cell["text"].startswith(f"AUROC {m['auroc']:.3f} (TPR {m['tpr']:.2f} / FPR {m['fpr']:.2f} at its threshold; TPR ")
