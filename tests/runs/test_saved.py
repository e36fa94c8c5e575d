"""Defences on a saved run directory from the command line: the poisoned set rebuilt, exit codes."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from perturbd.cli import app, main
from perturbd.errors import CheckpointError
from perturbd.runs.saved import CLEAN_SOURCE, load_inputs, locate


def _saved_indices(run_dir) -> list[int]:
    return json.loads((run_dir / "poison_indices.json").read_text())["indices"]


def test_load_inputs_of_a_run_directory(run_dir) -> None:
    inputs = load_inputs(run_dir)
    assert inputs.trigger is not None and inputs.target == 0 and inputs.clean_model is not None
    saved = _saved_indices(run_dir)
    assert inputs.poison_indices is not None and inputs.poison_indices.tolist() == saved and len(saved) == 20
    assert len(inputs.train) == 400, "the victim's images: the training split less the adversary's auxiliary part"
    assert bool((inputs.train.labels[inputs.poison_indices] == 0).all())
    assert inputs.clean_source == CLEAN_SOURCE and inputs.seed == 0
    assert len(inputs.clean) == len(inputs.train) - 20
    assert locate(run_dir / "model.safetensors").folder == run_dir


def test_missing_model_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="model not found"):
        locate(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="folder without model.safetensors"):
        locate(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"a run kept without its weights; `perturbd reproduce .* --restore`"):
        locate(tmp_path)


def test_cli_defend_on_a_run_directory(run_dir, tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["defend", str(run_dir), "-d", "activation_clustering", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "d" / "defenses.json").read_text())
    assert saved["defenses"][0]["metrics"]["poisoned"] == len(_saved_indices(run_dir)), "the poisoned training set is rebuilt from the run"


def test_cli_user_mistakes_exit_2(run_dir, monkeypatch) -> None:
    for argv in (
        ["defend", str(run_dir), "-d", "strip", "-p", "overlays=0"],
        ["defend", str(run_dir), "-d", "stirp"],
        ["defend", str(run_dir), "-d", "fine_tuning", "--source", "0"],
        ["defend", str(run_dir), "-d", "fine_tuning", "--source", "10"],
        ["audit", "missing.safetensors", str(run_dir)],
    ):
        with pytest.raises(SystemExit) as exit_:
            monkeypatch.setattr(sys, "argv", ["perturbd", *argv])
            main()
        assert exit_.value.code == 2
