"""Run directories: written whole or not at all, named by config, failure records, and which
code made a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perturbd.config import load_config
from perturbd.runs.rundir import (
    atomic_dir,
    clear_failure,
    failure_path,
    read_failures,
    record_failure,
    remove_stale,
    run_dir_for,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".tmp-*"))


# --------------------------------------------------------------------------- atomic_dir


def test_a_finished_block_leaves_the_whole_directory_and_nothing_else(tmp_path) -> None:
    final = tmp_path / "out" / "run-1234abcd"
    with atomic_dir(final) as tmp:
        assert tmp.is_dir() and tmp.parent == final.parent and tmp.name.startswith(".tmp-")
        (tmp / "metrics.json").write_text("{}")
        assert not final.exists()  # readers never see a half-written run
    assert (final / "metrics.json").read_text() == "{}"
    assert leftovers(final.parent) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_block_leaves_nothing(tmp_path, error) -> None:
    final = tmp_path / "run"
    with pytest.raises(error), atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise error("stopped")
    assert not final.exists() and leftovers(tmp_path) == []


def test_an_existing_directory_is_kept_without_replace(tmp_path) -> None:
    final = tmp_path / "run"
    final.mkdir()
    (final / "metrics.json").write_text("old")
    with pytest.raises(OSError), atomic_dir(final) as tmp:
        (tmp / "metrics.json").write_text("new")
    assert (final / "metrics.json").read_text() == "old" and leftovers(tmp_path) == []


def test_replace_swaps_the_old_directory_only_at_the_end(tmp_path) -> None:
    final = tmp_path / "run"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").is_file()  # still the old run while the new one is written
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_dir(final, replace=True) as tmp:
        (tmp / "newer.txt").write_text("newer")
        raise RuntimeError("failed")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"] and leftovers(tmp_path) == []


def test_stale_tmp_folders_of_dead_processes_are_removed(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a process that has exited
    kept = [f".tmp-a-{os.getpid()}", f".tmp-b-{os.getppid()}", ".tmp-c-notapid"]  # this process, a live one, no pid
    for name in [f".tmp-x-{dead.pid}", *kept]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial").write_text("x")
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "f").write_text("y")
    assert leftovers(tmp_path) == sorted(kept)
    remove_stale(tmp_path / "absent")  # no folder: nothing to do, no error
    assert not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- naming


def test_run_dir_is_name_and_config_hash(tiny_config, tmp_path) -> None:
    path = run_dir_for(tiny_config, tmp_path)
    assert path == tmp_path / f"mnist5k-grid-{tiny_config.hash()}" and len(tiny_config.hash()) == 8
    other = tiny_config.model_copy(update={"seed": tiny_config.seed + 1})
    assert run_dir_for(other, tmp_path) != path and run_dir_for(tiny_config, tmp_path) == path
    named = tiny_config.model_copy(update={"name": "mine"})
    assert run_dir_for(named, tmp_path).name.startswith("mine-")
    assert run_dir_for(tiny_config, Path("~/runs")) == Path.home() / "runs" / path.name


# --------------------------------------------------------------------------- failure records


def test_record_read_and_clear_failures(tiny_overrides, tmp_path) -> None:
    a = load_config(overrides=[*tiny_overrides, "poison.rate=0.05"])
    b = load_config(overrides=[*tiny_overrides, "poison.rate=0.2"])
    assert read_failures(tmp_path) == []  # no failures folder yet
    path = record_failure(a, tmp_path, "RuntimeError: out of memory", "RuntimeError", "Traceback ...")
    assert path == failure_path(a, tmp_path) == tmp_path / "failures" / f"{run_dir_for(a, tmp_path).name}.json"
    record = json.loads(path.read_text())
    assert record["config_hash"] == a.hash() and record["name"] == a.run_name and record["seed"] == a.seed
    assert (record["error"], record["type"], record["detail"]) == ("RuntimeError: out of memory", "RuntimeError", "Traceback ...")
    assert record["config"]["poison"]["rate"] == 0.05 and record["time"]
    record_failure(a, tmp_path, "ConfigError: bad", "ConfigError")  # a newer failure of the same run overwrites
    record_failure(b, tmp_path, "worker died", "WorkerDied")
    records = read_failures(tmp_path)
    assert sorted(r["error"] for r in records) == ["ConfigError: bad", "worker died"]
    assert [r["name"] + "-" + r["config_hash"] for r in records] == sorted(p.stem for p in (tmp_path / "failures").glob("*.json"))
    assert not list((tmp_path / "failures").glob("*.tmp"))
    clear_failure(a, tmp_path)
    clear_failure(a, tmp_path)  # clearing twice is fine
    assert [r["error"] for r in read_failures(tmp_path)] == ["worker died"]
