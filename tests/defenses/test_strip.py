"""STRIP as Gao et al. run it: blends are plain sums, entropy in bits over N blends, a threshold
from a normal fit of clean entropies; it separates triggered inputs on a backdoored model only."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch
from torch import nn

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.strip import Strip, split_pool
from perturbd.evaluation.harness import evaluate_defense

# 200 clean images, 8 overlays, 200 test images: over 4 seeds (the defender's clean order and the
# test sample) AUROC 0.955–0.966, TPR at 5 % FPR 0.80–0.86, the clean twin's AUROC 0.47–0.52; the
# normal fit's 1 % threshold lies below every entropy (TPR 0 at it): the cell shows both points
FAST = {"n_overlay": 100, "n_calibration": 100, "overlays": 8}


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
    d = Strip(overlays=3, n_overlay=4, n_calibration=4).fit(model, _bright())
    assert model.seen == pytest.approx(2 * 200 / 255), "x + x_clean, not clipped to 1"
    assert torch.allclose(d.entropy(_bright().images), torch.full((8,), 2.0)), "uniform over 4 labels: 2 bits"
    averaged = Recorder()
    Strip(overlays=3, n_overlay=4, n_calibration=4, blend="average", alpha=0.5).fit(averaged, _bright())
    assert averaged.seen == pytest.approx(200 / 255)


def test_threshold_is_the_normal_fit_quantile_of_clean_entropies(planted) -> None:
    d = build_defense("strip", frr=0.1, n_overlay=100, n_calibration=100, overlays=8).fit(planted.model, planted.clean)
    entropy = -d.scores_.double()
    expected = NormalDist(float(entropy.mean()), float(entropy.std(unbiased=False))).inv_cdf(0.1)
    assert d.threshold_ == pytest.approx(expected)
    assert torch.equal(d.flagged_, entropy < d.threshold_)
    assert d.clean_used_ == 200 and len(d.pool_) == 100 and len(d.scores_) == 100, "100 overlays, 100 calibration images"
    assert d.facts_ == {"overlay_images": 100, "calibration_images": 100, "calibration_fpr": float(d.flagged_.float().mean())}
    images = planted.clean.images[:50]
    assert torch.equal(d.flag(images), d.flag_scores(d.score(images))), "flags from the scores, same overlays"


def test_strip_separates_triggered_inputs(planted) -> None:
    r = evaluate_defense(build_defense("strip", **FAST), planted.inputs(), eval_limit=200)
    m = r.metrics
    assert m["auroc"] > 0.9 and m["tpr_at_5_fpr"] > 0.6, r.cell["text"]
    assert 0 <= m["tpr"] <= 1 and m["fpr"] < 0.1
    assert m["clean_model"]["auroc"] < 0.75, "a clean model gives STRIP nothing to find"
    assert r.clean_used == 200 and m["test_images"] == 200
    assert m["overlay_images"] == m["calibration_images"] == 100 and 0 <= m["calibration_fpr"] <= 1
    assert m["clean_model"]["calibration_images"] == 100
    text = f"AUROC {m['auroc']:.3f} (TPR {m['tpr']:.2f} / FPR {m['fpr']:.2f} (target 0.01) at its threshold; TPR "
    assert r.cell["text"].startswith(text), "the measured FPR beside the target"


def test_defaults_are_gaos_pool_and_calibration_capped_by_the_clean_images() -> None:
    d = Strip()
    assert (d.n_overlay, d.n_calibration) == (10_000, 2_000)
    assert split_pool(50_000, 10_000, 2_000) == (10_000, 2_000), "enough: Gao's numbers"
    assert split_pool(12_000, 10_000, 2_000) == (10_000, 2_000)
    assert split_pool(4_500, 10_000, 2_000) == (3_750, 750), "fewer: both scaled down in proportion"
    assert split_pool(4, 10_000, 2_000) == (2, 2) and split_pool(10, 2, 1000) == (2, 8), "at least 2 each"


def test_fewer_clean_images_than_asked_use_them_all(planted) -> None:
    few = planted.clean.subset(torch.arange(60))
    d = Strip(overlays=4).fit(planted.model, few)
    assert d.facts_["overlay_images"] == 50 and d.facts_["calibration_images"] == 10 and d.clean_used_ == 60
    assert torch.equal(d.pool_, few.images[:50]) and len(d.scores_) == 10
