"""Fine-pruning removes the planted backdoor: dormant channels of the last conv pruned, then tuned."""

from __future__ import annotations

from perturbd.defenses import build_defense
from perturbd.defenses.fine_pruning import last_conv


def test_removes_the_planted_backdoor(mitigates) -> None:
    mitigates("fine_pruning", {"n_clean": 300, "ratio": 0.9}, 0.5)


def test_pruned_channels_stay_zero(planted) -> None:
    d = build_defense("fine_pruning", n_clean=128, epochs=1, ratio=0.5).fit(planted.model, planted.clean)
    conv, _ = last_conv(d.model_)
    assert len(d.pruned_) == conv.out_channels // 2
    assert float(conv.weight.detach()[d.pruned_].abs().sum()) == 0.0
    assert 0.0 <= d.pruned_accuracy_ <= 1.0
