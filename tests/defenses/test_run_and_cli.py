"""Defences from an experiment config and from the command line: files, matrix, exit codes."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from perturbd.cli import app
from perturbd.config import load_config
from perturbd.errors import ConfigError
from perturbd.experiment import run, run_dir_for
from perturbd.report.matrix import matrix_rows, write_matrix

TINY = [
    "data.name=synthetic", "data.train_limit=500", "data.test_limit=200", "train.epochs=2", "train.batch_size=50",
    "train.device=cpu", "train.threads=1", "trigger.kind=patch", "trigger.amplitude=255", "poison.rate=0.05",
]  # fmt: skip
DEFENSES = (
    "defenses=[spectral_signature, {name: neural_cleanse, params: {steps: 5, batch_size: 4, n_clean: 50}},"
    " {name: fine_tuning, params: {n_clean: 50, epochs: 1}}]"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run(load_config(overrides=[*TINY, DEFENSES]), out).run_dir


def test_experiment_writes_defenses_and_matrix(run_dir) -> None:
    report = json.loads((run_dir / "defenses.json").read_text())
    assert [d["name"] for d in report["defenses"]] == ["spectral_signature", "neural_cleanse", "fine_tuning"]
    assert "training split minus the poisoned images" in report["clean_source"]
    assert report["defenses"][2]["clean_images_used"] == 50
    assert (run_dir / "neural_cleanse_trigger.png").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["defenses"]) == {"spectral_signature", "neural_cleanse", "fine_tuning"}
    md = (run_dir / "matrix.md").read_text()
    assert "spectral_signature" in md.splitlines()[0] and "patch (c=255, 3×3)" in md
    rows = list(csv.DictReader((run_dir / "matrix.csv").open()))
    assert len(rows) == 1 and float(rows[0]["spectral_signature"]) > 0.5 and "fine_tuning_accuracy_cost" in rows[0]


def test_matrix_over_several_runs(run_dir, tmp_path) -> None:
    md, csv_path = write_matrix(matrix_rows([run_dir, run_dir]), tmp_path)
    assert md.read_text().count("patch (c=255, 3×3)") == 2
    assert len(list(csv.DictReader(csv_path.open()))) == 2


def test_bad_defense_in_config_fails_before_any_work(tmp_path) -> None:
    cfg = load_config(overrides=[*TINY, "defenses=[{name: strip, params: {overlays: 0}}]"])
    with pytest.raises(ConfigError, match=r"strip.overlays must be in \[1, 1000\], got 0"):
        run(cfg, tmp_path)
    assert not run_dir_for(cfg, tmp_path).exists()


def test_cli_defend_on_a_run_directory(run_dir, tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["defend", str(run_dir), "-d", "activation_clustering", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "d" / "defenses.json").read_text())
    assert saved["defenses"][0]["metrics"]["poisoned"] == 25, "the poisoned training set is rebuilt from the run"


def test_cli_user_mistakes_exit_2(run_dir, monkeypatch) -> None:
    from perturbd.cli import main

    for argv in (["defend", str(run_dir), "-d", "strip", "-p", "overlays=0"], ["defend", str(run_dir), "-d", "stirp"], ["audit", "missing.safetensors", str(run_dir)]):
        with pytest.raises(SystemExit) as exit_:
            monkeypatch.setattr(sys, "argv", ["perturbd", *argv])
            main()
        assert exit_.value.code == 2


def test_cli_audit_exits_0_with_a_verdict(run_dir, tmp_path) -> None:
    args = ["audit", str(run_dir / "clean_model.safetensors"), str(run_dir), "-o", str(tmp_path / "a")]
    for p in ("n_clean=60", "nc_steps=5", "nc_batch=4", "uap_steps=5", "uap_batch=8"):
        args += ["-p", p]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "suspicious labels" in res.output
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["labels"][0]["label"] == 0
