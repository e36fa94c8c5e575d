"""The update audit: "no change" for an update on clean data, the target flagged for a poisoned one;
``perturbd audit OLD NEW`` prints and writes the verdict and exits 0 either way."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from perturbd.cli import app
from perturbd.defenses import build_defense
from perturbd.defenses.neural_cleanse import NeuralCleanse
from perturbd.defenses.update_audit import NO_CHANGE, UpdateAudit
from perturbd.errors import ConfigError

FAST = {"n_clean": 300, "nc_epochs": 4, "nc_batch": 8, "uap_steps": 30, "uap_batch": 16, "epsilon": 32}


def test_clean_update_is_no_change(planted, updates) -> None:
    result = UpdateAudit(**FAST).fit(updates.clean_update, planted.clean, before=updates.before)
    assert result.suspicious_labels_ == []
    assert all(r["verdict"] == NO_CHANGE for r in result.rows_)
    assert not bool(result.flagged_.any())


@pytest.fixture(scope="module")
def poisoned_audit(planted, updates) -> UpdateAudit:
    return UpdateAudit(**FAST).fit(updates.poisoned_update, planted.clean, before=updates.before)


def test_poisoned_update_flags_the_target(planted, poisoned_audit) -> None:
    result = poisoned_audit
    assert result.suspicious_labels_ == [planted.target]
    row = result.rows_[planted.target]
    assert row["verdict"].startswith("suspicious: backdoor toward label 0")
    assert row["evidence"] and row["fooling_rise"] > 0.3
    assert result.to_json()["suspicious_labels"] == [planted.target]
    assert result.flagged_.tolist() == [t == planted.target for t in range(10)]
    assert float(result.scores_[planted.target]) == pytest.approx(row["fooling_rise"])
    assert result.clean_used_ == 300 and result.seconds_ > 0


def test_figures_are_the_new_models_triggers_of_suspicious_labels(planted, poisoned_audit, tmp_path) -> None:
    result = poisoned_audit
    figures = result.figures()
    assert sorted(figures) == [f"audit_trigger_{planted.target}.png"]
    figures[f"audit_trigger_{planted.target}.png"](tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    assert result.nc_.clean_used_ == 150, "Neural Cleanse runs on the first half of the clean images"


@pytest.mark.parametrize("bad", [{"epsilon": 0}, {"rise": 2}, {"nc_epochs": 0}, {"n_clean": 1}, {"epsilonn": 3}])
def test_bad_audit_parameters(bad: dict) -> None:
    with pytest.raises(ConfigError, match="audit|unknown parameter"):
        build_defense("update_audit", **bad)


def test_too_few_clean_images_is_a_one_line_error(planted) -> None:
    few = planted.clean.subset(planted.clean.labels.new_tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="needs at least 4 clean images, got 3"):
        UpdateAudit().fit(planted.model, few, before=planted.clean_model)


def test_cli_audit_exits_0_with_a_verdict(run_dir, tmp_path) -> None:
    args = ["audit", str(run_dir / "clean_model.safetensors"), str(run_dir), "-o", str(tmp_path / "a")]
    for p in ("n_clean=60", "nc_epochs=1", "nc_batch=4", "uap_steps=5", "uap_batch=8"):
        args += ["-p", p]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "suspicious labels" in res.output
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["labels"][0]["label"] == 0
    assert set(saved) == {"suspicious_labels", "labels", "params", "clean_images_used", "seconds"}
    assert saved["params"]["n_clean"] == 60 and saved["clean_images_used"] == 60


def test_data_of_another_shape_is_a_one_line_error(planted) -> None:
    other = dataclasses.replace(planted.clean, images=planted.clean.images[:, :, :16, :16].contiguous())
    with pytest.raises(ConfigError, match=r"OLD model takes images of shape .* audit with the data the model was trained on"):
        UpdateAudit().fit(planted.model, other, before=planted.clean_model)


def test_neural_cleanse_defaults_are_neural_cleanses_own() -> None:
    audit, nc = UpdateAudit(), NeuralCleanse()
    assert (audit.nc_epochs, audit.nc_batch) == (nc.epochs, nc.batch_size) == (1000, 32)
    assert audit.n_clean // 2 == nc.epoch_images, "the half that runs Neural Cleanse is one of its epochs (the reference's NB_SAMPLE)"


def test_cli_audit_saves_by_default_and_shows_progress_when_piped(run_dir, tmp_path, monkeypatch, cli) -> None:
    """Without -o the work goes to ./audit-<new> (as defend's to ./defend-<model>); piped, each
    stage (the audit's four parts, Neural Cleanse, the universal perturbations) says when it starts and ends."""
    monkeypatch.chdir(tmp_path)
    args = ["audit", str(run_dir / "clean_model.safetensors"), str(run_dir)]
    for p in ("n_clean=60", "nc_epochs=1", "nc_batch=4", "uap_steps=5", "uap_batch=8"):
        args += ["-p", p]
    code, _, err = cli(*args)
    assert code == 0, err
    saved = tmp_path / f"audit-{run_dir.name}" / "audit.json"
    assert json.loads(saved.read_text())["clean_images_used"] == 60 and f"wrote audit-{run_dir.name}" in err
    stages = ("update_audit: started, 4 steps", "update_audit 0/4 › neural_cleanse: started", "update_audit 2/4 › universal perturbations")
    for stage in stages:
        assert stage in err, err
    assert "update_audit: done, 4/4 steps" in err
