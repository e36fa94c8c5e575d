"""Paths and the file system: every output location is checked before any work, the errors of the
operating system a user can fix are one line and exit 2 with nothing half written, and two
processes making the same run take turns (the second waits, then reports it done)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_RUN
from hostile import assert_one_line_exit_2, tree

from perturbd.config import load_config
from perturbd.errors import OutputError
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import TMP_PREFIX, atomic_dir, check_output, run_dir_for, run_lock

SETS = [arg for value in TINY_RUN for arg in ("--set", value)]
TRAIN = ["run", *SETS]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of :data:`TINY_RUN` (no defences)."""
    return run(load_config(overrides=list(TINY_RUN)), tmp_path_factory.mktemp("made")).run_dir


def _file(t: Path) -> Path:
    (t / "plain.txt").write_text("x")
    return t / "plain.txt"


def _run_copy(t: Path, made: Path, truncate: str = "") -> Path:
    copy = t / "copied" / made.name
    shutil.copytree(made, copy)
    if truncate:
        path = copy / truncate
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return copy


def _inside(t: Path, made: Path) -> Path:
    return t / "copied" / made.name


Case = Callable[[Path, Path], tuple[list[str], str]]

CASES: dict[str, Case] = {
    "run --out is a file": lambda t, m: ([*TRAIN, "--out", str(_file(t))], "is a file, not a folder"),
    "run --out below a file": lambda t, m: ([*TRAIN, "--out", f"{_file(t)}/runs"], "is a file, not a folder"),
    "run --out name too long": lambda t, m: ([*TRAIN, "--out", str(t / ("n" * 300))], "file name too long"),
    "sweep out: a file": lambda t, m: (
        ["sweep", str(_write(t / "s.yaml", f"base: {{data: {{name: synthetic}}}}\nseeds: [0]\nout: {_file(t)}\n"))],
        "out: ",
    ),
    "trigger show -o of an unknown format": lambda t, m: (["trigger", "show", "grid", "-o", str(t / "x.txt")], "cannot write a '.txt'"),
    "trigger show -o below a file": lambda t, m: (["trigger", "show", "grid", "-o", f"{_file(t)}/x.png"], "is a file, not a folder"),
    "trigger make -o below a file": lambda t, m: (["trigger", "make", "-o", f"{_file(t)}/m.safetensors"], "is a file, not a folder"),
    "trigger make -o not safetensors": lambda t, m: (["trigger", "make", "-o", str(t / "x.png")], "must end in .safetensors"),
    "export --to inside the run": lambda t, m: (["export", str(_run_copy(t, m)), "--to", str(_inside(t, m) / "x")], "inside the run"),
    "export --to the run itself": lambda t, m: (["export", str(_run_copy(t, m)), "--to", str(t / "copied" / m.name)], "inside the run"),
    "export --to below a file": lambda t, m: (["export", str(_run_copy(t, m)), "--to", f"{_file(t)}/x"], "is a file, not a folder"),
    "export a truncated poison_indices.json": lambda t, m: (
        ["export", str(_run_copy(t, m, "poison_indices.json")), "--to", str(t / "exp")],
        "poison_indices.json",
    ),
    "reproduce --out into the run": lambda t, m: (["reproduce", str(_run_copy(t, m)), "--out", str(_inside(t, m))], "inside the run"),
    "reproduce --out a file": lambda t, m: (["reproduce", str(_run_copy(t, m)), "--out", str(_file(t))], "is a file, not a folder"),
    "defend --out a file": lambda t, m: (["defend", str(m), "-d", "spectral_signature", "--out", str(_file(t))], "is a file, not a folder"),
    "audit --out below a file": lambda t, m: (["audit", str(m), str(m), "--out", f"{_file(t)}/a"], "is a file, not a folder"),
    "report --out a file": lambda t, m: (["report", str(m), "--out", str(_file(t))], "is a file, not a folder"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_output_mistake_is_one_line_exit_2_before_work(name: str, cli, monkeypatch, tmp_path, made) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    monkeypatch.chdir(tmp_path)
    args, message = CASES[name](inputs, made)
    before = tree(tmp_path)
    started = time.perf_counter()
    code, _, err = cli(*args)
    assert_one_line_exit_2(code, err, message)
    assert tree(tmp_path) == before, "nothing written"
    assert time.perf_counter() - started < 20, "answered before any training"


def test_a_long_run_name_that_fits_is_made(cli, tmp_path) -> None:
    """The longest run name (200 bytes) fits its temporary folder's name too."""
    code, _, err = cli(*TRAIN, "--out", str(tmp_path / ("d" * 60)), "--set", "name=" + "r" * 200)
    assert code == 0, err
    assert [p.name[:4] for p in (tmp_path / ("d" * 60)).iterdir()] == ["rrrr"]


def test_check_output_leaves_no_folder_it_made(tmp_path) -> None:
    assert check_output(tmp_path / "a" / "b", "--out", "x") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="file name too long"):
        check_output(tmp_path, "--out", "x" * 255)


@pytest.mark.parametrize(
    ("code", "cause"),
    [(errno.ENOSPC, "no space left on the device"), (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
def test_a_full_disk_while_writing_is_one_line_exit_2_nothing_half_written(code, cause, cli, monkeypatch, tmp_path) -> None:
    def full(self: RunDir, metrics: object) -> None:
        (self.path / "metrics.json").write_text("{")  # half a file, then the disk is full
        raise OSError(code, os.strerror(code), str(self.path / "metrics.json"))

    monkeypatch.setattr(RunDir, "write_metrics", full)
    out = tmp_path / "runs"
    rc, _, err = cli(*TRAIN, "--out", str(out))
    assert rc == 2, err
    said = err.strip().splitlines()
    assert [line for line in said if line.startswith("error:")] == said[-1:], err  # the progress lines, then one error line
    assert cause in said[-1] and f"{out}/synthetic-patch-" in said[-1] and "metrics.json" in said[-1], err
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == [], "no run folder, no temporary folder, no lock file"


def test_an_os_error_of_a_bug_is_not_hidden(tmp_path) -> None:
    with pytest.raises(OSError, match="Bad file descriptor"), atomic_dir(tmp_path / "r"):
        raise OSError(errno.EBADF, "Bad file descriptor")
    assert list(tmp_path.iterdir()) == []


def test_the_second_holder_of_a_run_lock_waits_then_sees_the_run(tmp_path) -> None:
    final = tmp_path / "r-00000000"
    taken = threading.Event()

    def first() -> None:
        with run_lock(final) as waited:
            assert not waited
            taken.set()
            time.sleep(0.5)
            final.mkdir()

    thread = threading.Thread(target=first)
    thread.start()
    taken.wait()
    said: list[str] = []
    with run_lock(final, said.append) as waited:
        assert waited and final.is_dir()
    thread.join()
    assert said == [f"another process is making {final}; waiting for it"]
    assert [p.name for p in tmp_path.iterdir()] == [final.name], "the lock file is removed"


def test_two_processes_making_one_run_train_it_once(tmp_path) -> None:
    """The fault test: two `perturbd run` of one config at once. One makes the run; the other
    waits for it and reports it done (or finds it done): both exit 0, no traceback, one folder."""
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "perturbd", *TRAIN, "--set", "train.epochs=3", "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr and "Errno" not in stderr, stderr
    final = run_dir_for(load_config(overrides=[*TINY_RUN, "train.epochs=3"]), out)
    assert [p.name for p in out.iterdir()] == [final.name]
    said = "".join(stderr + stdout for stdout, stderr in results)
    assert "already complete" in said or "made by another process" in said, said
    RunDir(final).metrics()


def test_a_full_disk_during_an_export_leaves_no_folder(monkeypatch, tmp_path, made) -> None:
    from perturbd.runs import export

    def full(path: Path, image: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(export, "write_png", full)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'exp'}/train/.*: no space left on the device"):
        export.export_run(made, tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []


def _tiny_sweep(tmp: Path, seeds: str) -> Path:
    """A sweep of :data:`TINY_RUN` over ``seeds``, run in this process, into ``tmp/sw``."""
    sections: dict[str, list[str]] = {}
    for item in TINY_RUN:
        key, value = item.split("=")
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"{name}: {value}")
    base = ", ".join(f"{section}: {{{', '.join(items)}}}" for section, items in sections.items())
    return _write(tmp / "s.yaml", f"base: {{{base}}}\nseeds: {seeds}\nworkers: 1\nout: {tmp / 'sw'}\n")


def test_a_full_disk_stops_a_sweep_in_one_line_finished_runs_kept(cli, monkeypatch, tmp_path) -> None:
    """An injected ENOSPC (a small real file system needs root to mount): the second run's
    metrics.json cannot be written. The sweep stops there in one line, exit 2: the first run is
    kept whole, the second leaves nothing, the third is not started, no failure is recorded (the
    disk is the problem, not the run); the same command finishes the sweep once space is freed."""
    made: list[Path] = []
    write_metrics = RunDir.write_metrics

    def full(self: RunDir, metrics: object) -> None:
        made.append(self.path)
        if len(made) == 2:
            (self.path / "metrics.json").write_text("{")  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / "metrics.json"))
        write_metrics(self, metrics)

    monkeypatch.setattr(RunDir, "write_metrics", full)
    spec, out = _tiny_sweep(tmp_path, "[0, 1, 2]"), tmp_path / "sw"
    rc, _, err = cli("sweep", str(spec))
    assert rc == 2, err
    said = err.strip().splitlines()
    assert [line for line in said if line.startswith("error:")] == said[-1:], err  # the sweep's lines, then one error line
    assert "no space left on the device" in said[-1] and "metrics.json" in said[-1] and "Traceback" not in err, err
    assert len(made) == 2, "the third run is not started"
    runs = [p for p in out.iterdir() if p.is_dir() and p.name not in (".twins", "failures")]
    assert [p.name for p in runs] == [made[0].name.removeprefix(TMP_PREFIX).rsplit("-", 1)[0]], "the first run kept, nothing of the second"
    RunDir(runs[0]).metrics()
    assert not (out / "failures").exists() or not any((out / "failures").iterdir())
    monkeypatch.setattr(RunDir, "write_metrics", write_metrics)  # space freed: the same command finishes
    rc, _, err = cli("sweep", str(spec))
    assert rc == 0, err
    assert len([p for p in out.iterdir() if (p / RunDir.METRICS).is_file()]) == 3
