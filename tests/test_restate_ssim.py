"""tools/restate_ssim.py on a tiny mnist5k run: the SSIM it restates is what ``stealth`` gives now,
the PSNR and every other value stay as they were, and a run whose images do not rebuild is left
untouched."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from perturbd.config import load_config
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir

TOOL = Path(__file__).resolve().parent.parent / "tools" / "restate_ssim.py"
TINY_MNIST5K = [
    "data.name=mnist5k", "data.train_limit=300", "data.test_limit=100", "train.epochs=1", "train.batch_size=32",
    "train.device=cpu", "train.threads=1", "trigger.kind=grid", "trigger.amplitude=10", "poison.rate=0.1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("restate_ssim", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny mnist5k run, measured by today's ``stealth``."""
    return run(load_config(overrides=TINY_MNIST5K), tmp_path_factory.mktemp("runs")).run_dir


@pytest.fixture
def old_run(made: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of ``made`` whose SSIM reads as an old run's (another variant's values); and the
    metrics as the run wrote them."""
    folder = tmp_path / made.name
    shutil.copytree(made, folder)
    path = RunDir(folder).metrics_path
    measured = json.loads(path.read_text())
    path.write_text(json.dumps({**measured, "stealth": {**measured["stealth"], "ssim_mean": 0.5, "ssim_min": 0.25}}))
    return folder, measured


def test_the_restated_ssim_is_what_stealth_gives_now_and_nothing_else_changes(tool, old_run):
    folder, measured = old_run
    outcome = tool.restate(folder, tool.DataCache(), [], "c0ffee")
    assert outcome.status == "restated", outcome.line()
    assert outcome.old == (0.5, 0.25)
    written = json.loads(RunDir(folder).metrics_path.read_text())
    # the run measured its SSIM with today's stealth: restating gives those very values back
    assert written["stealth"] == measured["stealth"]
    assert written["ssim_restated"] == {"commit": "c0ffee", "variant": "wang2004-valid"}
    assert {k: v for k, v in written.items() if k != "ssim_restated"} == measured
    metrics = RunDir(folder).metrics()  # still today's typed metrics, with the record
    assert metrics.ssim_restated is not None and metrics.ssim_restated.commit == "c0ffee"
    assert RunDir(folder).stored_metrics().problem is None
    assert any("restated at c0ffee" in what for what, _ in metrics.rows())
    again = tool.restate(folder, tool.DataCache(), [], "beef")
    assert again.status == "kept" and json.loads(RunDir(folder).metrics_path.read_text()) == written


def test_a_run_whose_psnr_does_not_rebuild_is_skipped_untouched(tool, old_run):
    folder, _ = old_run
    path = RunDir(folder).metrics_path
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "stealth": {**data["stealth"], "psnr_mean": data["stealth"]["psnr_mean"] + 1e-5}}))
    before = path.read_bytes()
    outcome = tool.restate(folder, tool.DataCache(), [], "c0ffee")
    assert outcome.status == "skipped" and "not the run's" in outcome.why
    assert path.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_run_without_its_trigger_is_skipped(tool, old_run):
    folder, _ = old_run
    RunDir(folder).trigger_path.unlink()
    outcome = tool.restate(folder, tool.DataCache(), [], "c0ffee")
    assert outcome.status == "skipped" and RunDir.TRIGGER in outcome.why


def test_the_command_restates_a_tree_less_what_it_excludes(tool, old_run, tmp_path, capsys):
    folder, measured = old_run
    other = tmp_path / "elsewhere" / folder.name
    shutil.copytree(folder, other)
    assert tool.main([str(tmp_path), "--exclude", str(tmp_path / "elsewhere")]) == 0
    assert "1 restated" in capsys.readouterr().out
    assert json.loads(RunDir(folder).metrics_path.read_text())["stealth"] == measured["stealth"]
    assert json.loads(RunDir(other).metrics_path.read_text())["stealth"]["ssim_mean"] == 0.5


def test_data_moved_to_another_root_is_read_from_there(tool):
    roots = tool.parse_roots(["/old/data=/new/data"])
    settings = {"data": {"name": "imagefolder:/old/data/cifar10-jpeg", "root": "/old/data"}}
    assert tool.data_overrides(settings, roots) == ["data.name=imagefolder:/new/data/cifar10-jpeg", "data.root=/new/data"]
    assert tool.data_overrides({"data": {"name": "mnist", "root": "/old/database"}}, roots) == []
    with pytest.raises(ValueError, match="OLD=NEW"):
        tool.parse_roots(["/old/data"])
