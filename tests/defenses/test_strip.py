"""STRIP separates triggered from clean inputs on a backdoored model, not on its clean twin."""

from __future__ import annotations

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense

# 400 clean images and 16 overlays: over 7 orders of the defender's clean images AUROC 0.93–0.96
# (with 200 and 8: 0.89–0.92, astride the 0.9 below); TPR at 5 % FPR 0.45–0.54 (that of this
# planted model is about 0.5 whatever the settings, so it is held to 0.4, not 0.5)
FAST = {"n_clean": 400, "overlays": 16}


def test_strip_separates_triggered_inputs(planted) -> None:
    r = evaluate_defense(build_defense("strip", **FAST), planted.inputs(), eval_limit=300)
    assert r.metrics["auroc"] > 0.9, r.cell["text"]
    assert r.metrics["tpr_at_fpr"] > 0.4
    assert r.metrics["fpr_on_test"] < 0.15
    assert r.metrics["clean_model"]["auroc"] < 0.75, "a clean model gives STRIP nothing to find"
    assert r.clean_used == 400


def test_threshold_flags_about_fpr_of_clean_calibration(planted) -> None:
    d = build_defense("strip", fpr=0.1, **FAST).fit(planted.model, planted.clean)
    assert 0.05 <= float(d.flagged_.float().mean()) <= 0.15
