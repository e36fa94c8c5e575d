"""experiments/removal_matrix.py: its rows and rates, its mistakes, and a tiny end-to-end pass
(mnist5k, 1 epoch, two rows × two mitigations) whose CSV and table agree with ``defenses.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import load_experiment

from perturbd.errors import ConfigError


@pytest.fixture(scope="module")
def rm():
    return load_experiment("removal_matrix")


def test_rows_take_the_equal_visibility_tables_rates(rm) -> None:
    args = rm.options(["--data", "mnist", "--seeds", "0", "1"])
    rates = rm.row_rates(args)
    table = json.loads((Path(rm.HERE) / "results/equal-visibility/equal_visibility.json").read_text())["rows"]
    expected = {r["kind"]: r["smallest_rate"] for r in table if r["psnr_goal"] == 34.5 and r["kind"] in rm.INVISIBLE}
    assert rates == expected and set(rates) == set(rm.INVISIBLE)
    sweep = rm.sweep(args)
    assert len(sweep.runs) == (len(rm.INVISIBLE) + 1) * 2  # the five invisible rows, the patch, two seeds
    patch = [c for c in sweep.runs if c.trigger.kind == "patch"]
    assert {c.poison.rate for c in patch} == {0.01} and all(c.trigger.psnr is None for c in patch)
    assert {c.trigger.psnr for c in sweep.runs if c.trigger.kind != "patch"} == {34.5}
    overridden = rm.row_rates(rm.options(["--rows", "wanet", "--rate", "wanet=0.05"]))
    assert overridden == {"wanet": 0.05}


def test_every_mitigation_and_training_time_defence_is_a_column(rm) -> None:
    names = [s.name for s in rm.mitigations(None, [])]
    assert {"fine_tuning", "fine_pruning", "nad", "anp", "clp", "ibau", "ft_sam", "abl"} <= set(names)
    assert not {"strip", "neural_cleanse", "spectral_signature"} & set(names)


def test_mistakes_are_one_line(rm) -> None:
    with pytest.raises(ConfigError, match="not a registered mitigation: strip"):
        rm.mitigations(["strip"], [])
    with pytest.raises(ConfigError, match="--param takes NAME.KEY=VALUE"):
        rm.mitigations(["clp"], ["nad.epochs=2"])
    with pytest.raises(ConfigError, match="--rate takes KIND=RATE"):
        rm.row_rates(rm.options(["--rows", "grid", "--rate", "grid=lots"]))
    with pytest.raises(ConfigError, match="no rate where wanet is learned at 20 dB"):
        rm.row_rates(rm.options(["--rows", "wanet", "--psnr", "20"]))


def test_end_to_end_on_mnist5k(rm, tmp_path: Path) -> None:
    out = tmp_path / "removal"
    argv = ["--data", "mnist5k", "--rows", "grid", "patch", "--seeds", "0", "--epochs", "1", "--rate", "grid=0.05"]
    recs = rm.main([*argv, "--mitigations", "fine_tuning", "clp", "--out", str(out)])
    assert {(r["row"], r["mitigation"]) for r in recs} == {(t, m) for t in ("grid", "patch") for m in ("fine_tuning", "clp")}
    with (out / "removal_matrix.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for rec in recs:  # the CSV holds what each run's defenses.json measured
        report = json.loads((out / "removal" / rec["run"] / "defenses.json").read_text())
        metrics = next(d["metrics"] for d in report["defenses"] if d["name"] == rec["mitigation"])
        assert rec["asr_after"] == metrics["asr_after"] and rec["der"] == metrics["der"]
        assert rec["clean_images_used"] == (0 if rec["mitigation"] == "clp" else metrics["clean_images_used"])
    md = (out / "removal_matrix.md").read_text()
    assert "| grid (5 %, 34.5 dB; seeds 0)" in md and "| patch (1 %; seeds 0)" in md and "not learned" in md
    again = rm.main([*argv, "--mitigations", "fine_tuning", "clp", "--out", str(out), "--table-only"])
    assert again == recs  # resumable: the table of what is on disk, nothing trained or defended twice
