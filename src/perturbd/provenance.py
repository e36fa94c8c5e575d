"""What made a result: the machine (:func:`cpu_name`) and the code (:func:`code_identity`).

Both go into a run's records and keys: the environment record of a run, the clean-twin cache
key (:mod:`perturbd.runs.twins`), the platform of the pinned digests, the notes of a
reproduction. No torch is imported here, so that the run-folder helpers and the reports that
compare code versions stay light.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
import subprocess
from pathlib import Path

from perturbd.version import __version__

__all__ = ["KERNEL_FLAGS", "PACKAGE", "code_digest", "code_identity", "cpu_name", "git_commit"]

#: CPU instruction sets that decide which kernels oneDNN and ATen run, and so the float results
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

#: the perturbd package folder: the sources :func:`code_digest` hashes
PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name and the instruction sets of :data:`KERNEL_FLAGS` it has, e.g.
    ``AMD EPYC (avx2 avx512f avx512_vnni avx512_bf16)``; without ``/proc/cpuinfo``, the platform's
    processor; without any of those sets, the machine's architecture (``aarch64``). Two CPUs can
    give other numbers from the same seed, code and threads (results record which made them)."""
    name = ""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    isa = " ".join(f for f in KERNEL_FLAGS if f in flags) or platform.machine()
    return f"{name or platform.processor() or platform.machine()} ({isa})"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the perturbd checkout this code runs from, if it is one."""
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 (16 hex digits) of perturbd's own source files (every ``.py`` under
    :data:`PACKAGE`, by relative path): the code that trains and evaluates."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_identity() -> dict[str, str | None]:
    """Which code made a result: the version, the commit and the digest of the sources (which
    tells uncommitted edits apart from their commit)."""
    return {"perturbd": __version__, "git_commit": git_commit(), "code_digest": code_digest()}
