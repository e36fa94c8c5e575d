"""Neural Cleanse flags the planted target, not a clean model; batched == label-by-label."""

from __future__ import annotations

import torch

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense, write_defenses
from perturbd.defenses.neural_cleanse import anomaly_index

# 300 steps of 4 images: the masks have converged (at 100 steps of 8, label 8's index reaches 2.26
# on one order of the defender's clean images in 7; here only the target is flagged on all 7, its
# index 2.9–4.5)
FAST = {"steps": 300, "batch_size": 4, "n_clean": 200}


def test_anomaly_index_is_signed_mad() -> None:
    idx = anomaly_index(torch.tensor([10.0, 10, 11, 9, 10, 2]))
    assert float(idx[-1]) > 2 and all(float(v) < 2 for v in idx[:-1])
    assert float(idx[2]) < 0, "larger than the median is the negative side"


def test_flags_target_of_backdoored_model_only(planted, tmp_path) -> None:
    r = evaluate_defense(build_defense("neural_cleanse", **FAST), planted.inputs())
    assert r.metrics["target_flagged"], r.metrics
    assert r.metrics["flagged_labels"] == [0]
    assert 0 not in r.metrics["clean_model"]["flagged_labels"]
    assert max(r.metrics["clean_model"]["anomaly_index"]) < r.metrics["target_anomaly_index"]
    write_defenses(tmp_path, [r], "test")
    assert (tmp_path / "neural_cleanse_trigger.png").stat().st_size > 0
    assert (tmp_path / "defenses.json").is_file()


def test_batched_equals_label_by_label(planted) -> None:
    small = {"steps": 30, "batch_size": 8, "n_clean": 100}
    batched = build_defense("neural_cleanse", mode="batched", **small).fit(planted.model, planted.clean)
    loop = build_defense("neural_cleanse", mode="loop", **small).fit(planted.model, planted.clean)
    assert batched.flagged_labels_ == loop.flagged_labels_
    assert torch.equal(batched.reached_, loop.reached_)
    assert torch.allclose(batched.masks_, loop.masks_, atol=1e-3)
    assert torch.allclose(batched.norms_, loop.norms_, rtol=1e-3)


def test_evidence_and_figures_are_per_label(planted, tmp_path) -> None:
    d = build_defense("neural_cleanse", steps=5, batch_size=4, n_clean=40).fit(planted.model, planted.clean)
    k = planted.train.num_classes
    assert set(d.evidence_) == {"mask_l1", "reached"}
    assert all(len(v) == k for v in d.evidence_.values())
    assert d.evidence_["mask_l1"] == [round(float(v), 3) for v in d.norms_]
    figures = d.figures()
    assert sorted(figures) == ["neural_cleanse_norms.png", "neural_cleanse_trigger.png"]
    for name, draw in figures.items():
        draw(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0
