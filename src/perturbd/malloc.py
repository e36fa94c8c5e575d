"""glibc's malloc set for tensors: large blocks stay in the heap and are reused.

By default glibc serves a block above its mmap threshold (which it raises to at most 32 MiB)
with a fresh ``mmap`` and unmaps it on ``free``, and gives the top of the heap back to the
kernel. A batch's large activations are then new memory at every step, which the kernel
faults in and zeroes page by page. :func:`tune_malloc` turns both off (``M_MMAP_MAX`` 0,
``M_TRIM_THRESHOLD`` at its largest), as the variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` would at start: a freed tensor's memory serves the next one. It
changes no number, only where tensors live (``tests/test_malloc.py`` checks the weights of a
training bit for bit); the price is that the process keeps its peak memory until it exits.

It is applied once per process, by an entry point only (:func:`perturbd.process.tune_process`:
the ``perturbd`` command, a sweep worker, a benchmark), never by a library function; a run
records what holds (:func:`malloc_state`). ``PERTURBD_MALLOC=system`` keeps glibc's defaults; so
do ``MALLOC_*`` variables of your own, and any C library but glibc. What it gains is in
``benchmarks/README.md``.
"""

from __future__ import annotations

import ctypes
import os

from perturbd.errors import ConfigError

__all__ = ["malloc_mode", "malloc_state", "tune_malloc"]

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
LARGEST = 2**31 - 1  # mallopt takes an int
MODES = ("tuned", "system")
_OWN_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_state: str | None = None


def malloc_mode() -> str:
    """``PERTURBD_MALLOC``: ``tuned`` (the default) or ``system``; anything else is a one-line error."""
    mode = os.environ.get("PERTURBD_MALLOC", "tuned").strip().lower() or "tuned"
    if mode not in MODES:
        raise ConfigError(f"PERTURBD_MALLOC={mode!r} is not one of {', '.join(MODES)}; unset it for the default (tuned)")
    return mode


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (AttributeError, ValueError, OSError):
        return False


def tune_malloc() -> str:
    """Set glibc's malloc for tensors once in this process (see the module). Returns what holds:
    ``tuned``; ``system`` (asked for); ``own`` (your ``MALLOC_*`` variables, left alone); or
    ``unavailable`` (not glibc)."""
    global _state
    if _state is None:
        _state = _tune()
    return _state


def malloc_state() -> str:
    """What holds in this process, without changing it: what :func:`tune_malloc` returned, or
    ``untuned`` (glibc's defaults: no entry point tuned it)."""
    return _state or "untuned"


def _tune() -> str:
    if malloc_mode() == "system":
        return "system"
    if any(name in os.environ for name in _OWN_VARIABLES) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "own"
    if not _glibc():
        return "unavailable"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, LARGEST) != 1:
        return "unavailable"
    return "tuned"
