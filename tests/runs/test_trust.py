"""A received run folder never runs code (:mod:`perturbd.trust`): a ``config.yaml`` that names
``factory:`` or ``torchscript:`` is refused by ``defend``, ``audit``, ``export`` and ``reproduce``
(and the Python API) in one line, exit 2, before anything is imported or loaded, unless
``--trust-code`` (``trust_code=True``) or ``--arch`` says so; ``report`` builds no model at all."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN
from hostile import assert_api_error, assert_one_line_exit_2
from torch import nn

from perturbd.config import load_config
from perturbd.errors import CheckpointError, ConfigError
from perturbd.runs.experiment import run
from perturbd.runs.export import export_run
from perturbd.runs.folder import RunDir
from perturbd.runs.reproduce import reproduce
from perturbd.runs.saved import SavedRun, load_inputs, locate, model_spec

# a factory that says when it is imported: helper.py in the current folder
HELPER = """from pathlib import Path

Path(__file__).with_name("imported.marker").write_text("imported")

from torch import nn


def make(image_shape, num_classes):
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))
"""
FACTORY = "factory:helper:make"


def _write_helper(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper.py").write_text(HELPER)
    return folder / "imported.marker"


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of :data:`TINY_RUN` whose model is ``factory:helper:make`` (the user's own
    config names it: trusted); ``helper`` is then forgotten, so that a test sees whether it is
    imported again."""
    code = tmp_path_factory.mktemp("code")
    marker = _write_helper(code)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(code)
        mp.setattr(sys, "path", list(sys.path))  # the factory's import adds the current folder
        folder = run(load_config(overrides=[*TINY_RUN, f"model.name={FACTORY}"]), tmp_path_factory.mktemp("runs")).run_dir
    sys.modules.pop("helper", None)
    marker.unlink()
    return folder


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current folder holds helper.py (its marker is returned); ``os.abort`` and
    ``torch.jit.load`` record calls instead of running; the import state is restored after."""
    marker = _write_helper(tmp_path / "cwd")
    monkeypatch.chdir(marker.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "helper", raising=False)
    calls: list[str] = []
    monkeypatch.setattr(os, "abort", lambda: calls.append("os.abort"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append("torch.jit.load"))
    yield marker
    assert not calls, f"code ran: {calls}"
    sys.modules.pop("helper", None)


def _scripted(folder: Path) -> Path:
    """A real TorchScript file (what torch.jit.load would run)."""
    path = folder / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(nn.Linear(4, 2)), str(path))
    return path


def _edited(source: Path, dest: Path, **keys: object) -> Path:
    """A copy of the run ``source`` whose config.yaml has ``keys`` (``model__name`` = model.name)."""
    folder = shutil.copytree(source, dest)
    config = yaml.safe_load((folder / RunDir.CONFIG).read_text())
    for key, value in keys.items():
        section, name = key.split("__")
        config.setdefault(section, {})[name] = value
    (folder / RunDir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


# (key, value, other keys) a received config.yaml names code with
CASES = {
    "os.abort": ("model.name", lambda t: "factory:os:abort", {}),
    "helper.py in the current folder": ("model.name", lambda t: FACTORY, {}),
    "torchscript file": ("model.name", lambda t: f"torchscript:{_scripted(t)}", {}),
    "surrogate": ("attack.surrogate", lambda t: FACTORY, {"model__name": "auto", "attack__knowledge": "none"}),
}


def _bad_run(factory_run: Path, tmp_path: Path, case: str) -> tuple[Path, str, str]:
    key, value_of, other = CASES[case]
    value = value_of(tmp_path)
    folder = _edited(factory_run, tmp_path / "run", **{**other, key.replace(".", "__"): value})
    return folder, key, value


def _commands(folder: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "defend": ["defend", str(folder), "-d", "spectral_signature", "--out", str(tmp_path / "defended")],
        "audit": ["audit", str(folder), str(folder)],
        "export": ["export", str(folder), "--to", str(tmp_path / "exported")],
        "reproduce": ["reproduce", str(folder), "--out", str(tmp_path / "again")],
    }


@pytest.mark.parametrize("command", ["defend", "audit", "export", "reproduce"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_folder_naming_code_is_refused_in_one_line(cli, factory_run, here, tmp_path, case, command) -> None:
    folder, key, value = _bad_run(factory_run, tmp_path, case)
    code, _, err = cli(*_commands(folder, tmp_path)[command])
    assert_one_line_exit_2(code, err, str(folder / RunDir.CONFIG), f"{key} '{value}'", "--trust-code if you trust who wrote it")
    assert ("--arch" in err) == (command in ("defend", "audit") and key == "model.name"), err
    assert not here.exists(), "helper.py was imported"
    assert "helper" not in sys.modules
    assert not any((tmp_path / name).exists() for name in ("defended", "exported", "again"))


def test_audit_checks_the_old_model_before_loading_the_new_one(cli, factory_run, here, tmp_path) -> None:
    folder, key, value = _bad_run(factory_run, tmp_path, "os.abort")
    good = _edited(factory_run, tmp_path / "good", model__name="auto")
    code, _, err = cli("audit", str(folder), str(good))
    assert_one_line_exit_2(code, err, f"{key} '{value}'")


@pytest.mark.parametrize("case", list(CASES))
def test_the_python_api_refuses_it_too(factory_run, here, tmp_path, case) -> None:
    folder, key, value = _bad_run(factory_run, tmp_path, case)
    calls = {
        "RunDir.config": lambda: RunDir(folder).config(),
        "RunDir.config with data.root": lambda: RunDir(folder).config([f"data.root={tmp_path}"]),
        "RunDir.stored_config": lambda: RunDir(folder).stored_config(),
        "locate": lambda: locate(folder),
        "load_inputs": lambda: load_inputs(folder),
        "export_run": lambda: export_run(folder, tmp_path / "exported"),
        "reproduce": lambda: reproduce(folder, tmp_path / "again"),
    }
    for name, call in calls.items():
        assert_api_error(call, ConfigError, f"{key} '{value}' names code to run", name)
    assert not here.exists()


def test_what_the_user_sets_is_theirs(factory_run, here, tmp_path) -> None:
    """An override or --arch naming the architecture replaces the file's: nothing to refuse."""
    folder, _, _ = _bad_run(factory_run, tmp_path, "os.abort")
    assert RunDir(folder).config(["model.name=auto"]).model.name == "auto"
    assert RunDir(folder).config(["model={name: auto}"]).model.name == "auto"
    assert locate(folder, model={"name": "auto"}).config is not None


@pytest.mark.parametrize("where", ["trust_code: true", "model: {trust_code: true}"])
def test_a_run_folder_cannot_trust_itself(cli, factory_run, here, tmp_path, where) -> None:
    folder = shutil.copytree(factory_run, tmp_path / "run")
    config = yaml.safe_load((folder / RunDir.CONFIG).read_text())
    if where.startswith("model"):
        config["model"]["trust_code"] = True
    else:
        config["trust_code"] = True
    (folder / RunDir.CONFIG).write_text(yaml.safe_dump(config))
    code, _, err = cli("defend", str(folder), "-d", "spectral_signature", "--out", str(tmp_path / "defended"))
    assert_one_line_exit_2(code, err, "unknown config key", "trust_code")
    assert not here.exists()


def test_a_checkpoint_naming_code_is_refused_unless_trusted(factory_run, here, tmp_path) -> None:
    bare = Path(shutil.copy(factory_run / RunDir.MODEL, tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match=f"'{FACTORY}'.*--trust-code if you trust who wrote it, or --arch {FACTORY}"):
        model_spec(SavedRun(bare))
    assert model_spec(SavedRun(bare, trust_code=True)).name == FACTORY  # named, not yet imported
    assert not here.exists()


def test_report_never_imports_a_factory(cli, factory_run, here, tmp_path) -> None:
    folder = shutil.copytree(factory_run, tmp_path / "run")
    code, _, err = cli("report", str(folder))
    assert code == 0, err
    assert not here.exists() and "helper" not in sys.modules


# --- trusted: the same run works ------------------------------------------------------------------


def test_with_trust_code_the_factory_run_is_defended_exported_and_reproduced(cli, factory_run, here, tmp_path) -> None:
    code, _, err = cli("defend", str(factory_run), "-d", "spectral_signature", "--out", str(tmp_path / "defended"), "--trust-code")
    assert code == 0, err
    assert here.exists(), "the trusted factory is imported from the current folder"
    code, _, err = cli("export", str(factory_run), "--to", str(tmp_path / "exported"), "--trust-code")
    assert code == 0 and (tmp_path / "exported" / "manifest.csv").is_file(), err
    code, out, err = cli("reproduce", str(factory_run), "--out", str(tmp_path / "again"), "--trust-code")
    assert code == 0 and "reproduced exactly" in err, out + err


def test_with_trust_code_the_python_api_builds_it(factory_run, here) -> None:
    inputs = load_inputs(factory_run, trust_code=True)
    assert inputs.model.arch == FACTORY and inputs.clean_model is not None and here.exists()


def test_arch_names_the_architecture_instead(cli, factory_run, here, tmp_path) -> None:
    """--arch on the command line is the user's word: the same factory, named by them, is built."""
    code, _, err = cli("defend", str(factory_run), "-d", "spectral_signature", "--out", str(tmp_path / "d"), "--arch", FACTORY)
    assert code == 0, err
    assert here.exists()


@pytest.mark.parametrize("command", ["defend", "audit"])
def test_a_checkpoint_naming_code_is_refused_by_the_cli(cli, factory_run, here, tmp_path, command) -> None:
    """A bare model file whose metadata names a factory: the same one line as a run folder's."""
    bare = Path(shutil.copy(factory_run / RunDir.MODEL, tmp_path / "m.safetensors"))
    args = {
        "defend": ["defend", str(bare), "--data", "synthetic", "-d", "spectral_signature", "--out", str(tmp_path / "d")],
        "audit": ["audit", str(bare), str(bare), "--data", "synthetic", "--out", str(tmp_path / "d")],
    }[command]
    code, _, err = cli(*args)
    assert_one_line_exit_2(code, err, FACTORY, "--trust-code if you trust who wrote it")
    assert not (tmp_path / "d").exists() and not here.exists() and "helper" not in sys.modules
