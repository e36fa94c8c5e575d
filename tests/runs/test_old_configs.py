"""A finished run's config.yaml as older versions wrote it: the flat trigger section with every
kind's parameters, another kind's at a value it was swept to (``kind: grid``, ``budget: 3``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perturbd.config import LEGACY_TRIGGER_DEFAULTS, ExperimentConfig, load_config
from perturbd.errors import ConfigError
from perturbd.runs.export import check_export
from perturbd.runs.folder import RunDir
from perturbd.runs.saved import locate

# the default experiment's hash under the code before per-kind Params (fb8b79d), with trigger.budget=3
# (``perturbd run --set trigger.budget=3`` there wrote metrics.json with this config_hash)
OLD_HASH = "c40ffe2b"
# that default experiment: the recipe of the time (10 epochs at 5 %), today's other defaults
THEN = ExperimentConfig.model_validate({"train": {"epochs": 10}, "poison": {"rate": 0.05}})


def old_grid_run(folder: Path, budget: float = 3.0) -> RunDir:
    """A finished grid run as the code before per-kind Params wrote its config and metrics."""
    folder.mkdir()
    data = THEN.model_dump(mode="json")
    data["trigger"] = {"kind": "grid", **LEGACY_TRIGGER_DEFAULTS, "budget": budget, "psnr": None, "ssim": None}
    (folder / RunDir.CONFIG).write_text(yaml.safe_dump(data, sort_keys=False))
    (folder / RunDir.METRICS).write_text(f'{{"config_hash": "{OLD_HASH}"}}')
    return RunDir(folder)


def test_a_finished_run_reads_without_the_other_kinds_keys(tmp_path: Path) -> None:
    run = old_grid_run(tmp_path / "run")
    assert run.config() == THEN and run.stored_config() == THEN
    assert run.config(["data.root=/elsewhere"]).data.root == Path("/elsewhere")
    with pytest.raises(ConfigError, match=r"^trigger.budget=3.0 is not a parameter of 'grid'"):
        load_config(run.config_path)  # a config a user writes stays strict
    with pytest.raises(ConfigError, match=r"^trigger.budget=3 is not a parameter of 'grid'"):
        run.config(["trigger.budget=3"])  # and so do the keys one sets


def test_a_finished_run_that_hashes_differently_today_says_why(tmp_path: Path) -> None:
    run = old_grid_run(tmp_path / "run")
    today = THEN.hash()
    assert run.hash_note() == (
        f"{run.path} was run under config hash {OLD_HASH}; it was hashed with trigger.budget=3.0, which kind 'grid' does not take "
        f"(dropped: it never took part in the run): today it hashes {today}, and a retrain is written under {today}"
    )
    (run.metrics_path).write_text(f'{{"config_hash": "{today}"}}')
    assert run.hash_note() is None
    edited = old_grid_run(tmp_path / "edited", budget=10.0)
    assert edited.hash_note() == (
        f"{edited.path} was run under config hash {OLD_HASH}; its config.yaml is not the one it ran with: "
        f"today it hashes {today}, and a retrain is written under {today}"
    )


def test_defend_and_export_read_it_too(tmp_path: Path) -> None:
    run = old_grid_run(tmp_path / "run")
    for name in (RunDir.MODEL, RunDir.POISON_INDICES, RunDir.TRIGGER):
        (run.path / name).write_bytes(b"")
    assert locate(run.path).config == THEN
    assert check_export(run.path, tmp_path / "out") == THEN
