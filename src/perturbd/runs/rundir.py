"""Run directories and failure records: where a run's files go, written whole or not at all.

A run directory ``<out>/<name>-<confighash8>/`` (:func:`run_dir_for`) is either all there or not
there: readers and sweeps treat an existing directory as complete. Partial work lives in
``<out>/.tmp-*`` folders, removed on failure and swept away when their process is gone. A run of a
sweep that failed leaves ``<out>/failures/<name>-<confighash8>.json`` (:func:`record_failure`),
removed when it succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perturbd.config import ExperimentConfig

TMP_PREFIX = ".tmp-"
FAILURES = "failures"


def run_dir_for(cfg: ExperimentConfig, out: Path) -> Path:
    """The run directory of ``cfg`` under ``out``: ``<out>/<name>-<confighash8>``."""
    return Path(out).expanduser() / f"{cfg.run_name}-{cfg.hash()}"


def failure_path(cfg: ExperimentConfig, out: Path) -> Path:
    return Path(out) / FAILURES / f"{cfg.run_name}-{cfg.hash()}.json"


def record_failure(cfg: ExperimentConfig, out: Path, error: str, kind: str, detail: str = "") -> Path:
    """Write ``<out>/failures/<name>-<hash>.json`` (overwriting an older record of the same run)."""
    path = failure_path(cfg, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write_json(tmp, {
        "config_hash": cfg.hash(), "name": cfg.run_name, "seed": cfg.seed, "error": error,
        "type": kind, "detail": detail, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": cfg.model_dump(mode="json"),
    })  # fmt: skip
    tmp.replace(path)
    return path


def clear_failure(cfg: ExperimentConfig, out: Path) -> None:
    failure_path(cfg, out).unlink(missing_ok=True)


def read_failures(out: Path) -> list[dict[str, Any]]:
    """Every failure record under ``out``, by file name."""
    folder = Path(out) / FAILURES
    return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> None:
    """Delete ``.tmp-*`` folders left by processes that no longer run (killed runs)."""
    if not out.is_dir():
        return
    for tmp in out.glob(f"{TMP_PREFIX}*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[-1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; rename it to ``final`` when the block succeeds.

    On any exception (or a signal turned into one) the temporary folder is removed and ``final``
    is untouched. With ``replace`` an existing ``final`` is swapped out only at the very end.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists() and replace:
            old = final.parent / f"{TMP_PREFIX}{final.name}-old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
