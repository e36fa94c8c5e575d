"""Run directories and failure records: where a run's files go, written whole or not at all.

A run directory ``<out>/<name>-<confighash8>/`` (:func:`run_dir_for`) is either all there or not
there: readers and sweeps treat an existing directory as complete. Partial work lives in
``<out>/.tmp-*`` folders, removed on failure and swept away when their process is gone. Output locations
are checked before any work (:func:`check_output`); the errors of the operating system a user can
fix (no space, read-only, no permission, a name too long) become one-line errors
(:class:`OutputError`, :func:`user_os_errors`). Two processes making the same run take turns on its lock
(:func:`run_lock`): the second waits, then finds it done. A run of a
sweep that failed leaves ``<out>/failures/<name>-<confighash8>.json`` (:func:`record_failure`),
removed when it succeeds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from perturbd.config import ExperimentConfig
from perturbd.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; the atomic writes still hold
    fcntl = None  # type: ignore[assignment]

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
    """Every readable failure record under ``out``, by file name (a truncated one is skipped)."""
    folder = Path(out) / FAILURES
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    with user_os_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(final.parent)
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
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        problem = os_problem(err, final) if isinstance(err, OSError) else None
        if problem is not None:  # named by the final path: the temporary one is gone
            problem = OutputError(str(problem).replace(str(tmp), str(final)))
            raise problem from err
        raise


#: the errors of the operating system a user can fix, with what to do
USER_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another folder"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter folder or run name"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another folder"),
}


def os_problem(err: OSError, path: Path) -> OutputError | None:
    """``err`` as a one-line :class:`OutputError` naming the path and the cause, if the user can
    fix it (:data:`USER_ERRNOS`); None otherwise (a bug, raised as it is)."""
    known = USER_ERRNOS.get(err.errno) if err.errno is not None else None
    if known is None:
        return None
    cause, fix = known
    return OutputError(f"cannot write {err.filename or path}: {cause}; {fix}")


@contextmanager
def user_os_errors(path: Path) -> Iterator[None]:
    """Turn the errors of the operating system a user can fix into a one-line :class:`OutputError`."""
    try:
        yield
    except OSError as err:
        problem = os_problem(err, path)
        if problem is None:
            raise
        raise problem from err


def check_output(folder: Path, option: str, name: str = "") -> Path:
    """Check before any work that ``folder`` is (or can be made) a folder where ``name`` can be
    written: create it, write and remove a probe named as the longest temporary name perturbd
    gives ``name`` there (:func:`atomic_dir`), then remove the folders it created. ``option``
    names the setting in the message (``--out``). Returns the folder.

    Raises:
        OutputError: a file where a folder should be, a name too long, read-only, no permission,
            no space.
    """
    folder = Path(folder).expanduser()
    probe = folder / f"{TMP_PREFIX}{name or 'probe'}-old-{os.getpid()}"
    created: list[Path] = []
    try:
        for above in (folder, *folder.parents):
            if above.exists() and not above.is_dir():
                raise OutputError(f"{option} {folder}: {above} is a file, not a folder; choose a folder")
            if above.exists():
                break
            created.append(above)
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0")
        probe.unlink()
    except OSError as err:
        cause, fix = USER_ERRNOS.get(err.errno or 0, (err.strerror or str(err), "choose another folder"))
        where = f"cannot write {err.filename}: " if err.filename and str(err.filename) != str(folder) else ""
        raise OutputError(f"{option} {folder}: {where}{cause}; {fix}") from err
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
        for made in created:
            try:
                made.rmdir()
            except OSError:
                break
    return folder


@contextmanager
def run_lock(final: Path, wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold ``<parent>/.<name>.lock`` while the run ``final`` is made: the first process to take it
    makes the run; another waits for it (``wait`` is told once) and then finds the run done. Yields
    whether it waited. The lock file is removed by its holder, with the folders it had to create if
    they are left empty (a run that failed); the operating system releases the lock of a process
    that dies. Without ``fcntl`` (not POSIX) there is no lock."""
    if fcntl is None:
        yield False
        return
    path = final.parent / f".{final.name}.lock"
    waited = False
    created = [above for above in (final.parent, *final.parent.parents) if not above.exists()]
    with user_os_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with user_os_errors(path):
            fh = open(path, "a")  # noqa: SIM115  (closed in the finally below)
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited and wait is not None:
                    wait(f"another process is making {final}; waiting for it")
                waited = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it as we waited: take the new one
                continue
            try:
                yield waited
            finally:
                path.unlink(missing_ok=True)
                for made in created:  # a run that failed leaves no folder it made (rmdir: only when empty)
                    try:
                        made.rmdir()
                    except OSError:
                        break
            return
        finally:
            fh.close()
