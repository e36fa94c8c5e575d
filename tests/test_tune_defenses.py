"""experiments/tune_defenses.py: the candidates as labelled defences, the choice by mean AUROC, the
refusal of scored seeds, and a smoke run (mnist5k, 300 images, 1 epoch)."""

from __future__ import annotations

import json

import pytest
from conftest import load_experiment


@pytest.fixture(scope="module")
def tune():
    return load_experiment("tune_defenses")


def test_the_candidates_are_labelled_variants(tune) -> None:
    labels = [s.report_name for s in tune.candidate_specs()]
    assert labels[:8] == [f"spectral_signature_k{k}" for k in range(1, 9)]
    assert labels[8:] == ["activation_clustering_ica", "activation_clustering_pca"]


def test_the_choice_is_the_highest_mean_and_a_tie_keeps_the_first(tune) -> None:
    aurocs = {
        "spectral_signature": {f"k{k}": [0.5, None] for k in range(1, 9)} | {"k5": [0.9, 0.8]},
        "activation_clustering": {"ica": [0.7, 0.7], "pca": [0.7, 0.7]},
    }
    chosen = tune.choose(aurocs)
    assert chosen["spectral_signature"]["label"] == "spectral_signature_k5" and chosen["spectral_signature"]["params"] == {"components": 5}
    assert chosen["spectral_signature"]["candidates"]["k5"]["mean"] == pytest.approx(0.85)
    assert chosen["activation_clustering"]["chosen"] == "ica", "a tie: the first listed (the paper's)"


def test_scored_seeds_are_refused(tune) -> None:
    with pytest.raises(SystemExit, match=r"^tuning seeds \[2\] are scored seeds too"):
        tune.main(["--seeds", "2", "10"])


def test_a_smoke_run_writes_its_choice(tune, tmp_path) -> None:
    record = tune.main([
        "--out", str(tmp_path), "--rows", "grid", "--seeds", "10", "--set", "data.name=mnist5k", "--set", "data.train_limit=300",
        "--set", "data.test_limit=100", "--set", "train.epochs=1", "--set", "train.threads=1", "--set", "poison.rate=0.05",
    ])  # fmt: skip
    saved = json.loads((tmp_path / "tune_defenses.json").read_text())
    assert saved == record and saved["tuning_seeds"] == [10] and saved["scored_seeds"] == [0, 1, 2]
    ss = saved["defenses"]["spectral_signature"]
    assert len(ss["candidates"]) == 8 and all(len(c["auroc"]) == 1 for c in ss["candidates"].values())
    assert ss["label"].startswith("spectral_signature_k") and saved["defenses"]["activation_clustering"]["chosen"] in ("ica", "pca")
