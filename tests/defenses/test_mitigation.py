"""Each mitigation lowers the ASR of the planted backdoor and keeps clean accuracy."""

from __future__ import annotations

import pytest

from perturbd.defenses import build_defense
from perturbd.defenses.evaluate import evaluate_defense

# (name, params, max ASR after): fine-tuning only dents an obvious patch backdoor, which is the
# known weakness of plain fine-tuning; the others remove it
CASES = [
    ("fine_tuning", {"n_clean": 500, "lr": 0.1, "epochs": 10}, 0.88),
    ("fine_pruning", {"n_clean": 300, "ratio": 0.9}, 0.5),
    ("distillation", {"n_clean": 300}, 0.3),
    ("adversarial_training", {"n_clean": 300, "epsilon": 64}, 0.3),
]


@pytest.mark.parametrize("name,params,max_asr", CASES, ids=[c[0] for c in CASES])
def test_mitigation_lowers_asr(planted, name: str, params: dict, max_asr: float) -> None:
    r = evaluate_defense(build_defense(name, **params), planted.inputs())
    m = r.metrics
    assert m["asr_before"] > 0.95
    assert m["asr_after"] <= max_asr, r.cell["text"]
    assert m["clean_accuracy_after"] > 0.85
    assert r.clean_used == params["n_clean"]
