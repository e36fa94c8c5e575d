"""STRIP separates triggered from clean inputs on a backdoored model, not on its clean twin."""

from __future__ import annotations

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense

FAST = {"n_clean": 200, "overlays": 8}


def test_strip_separates_triggered_inputs(planted) -> None:
    r = evaluate_defense(build_defense("strip", **FAST), planted.inputs(), eval_limit=300)
    assert r.metrics["auroc"] > 0.9, r.cell["text"]
    assert r.metrics["tpr_at_fpr"] > 0.5
    assert r.metrics["fpr_on_test"] < 0.15
    assert r.metrics["clean_model"]["auroc"] < 0.75, "a clean model gives STRIP nothing to find"
    assert r.clean_used == 200


def test_threshold_flags_about_fpr_of_clean_calibration(planted) -> None:
    d = build_defense("strip", fpr=0.1, **FAST).fit(planted.model, planted.clean)
    assert 0.05 <= float(d.flagged_.float().mean()) <= 0.15
