"""Process-wide tuning for an entry point: torch's CPU threads and glibc's malloc.

Only entry points call :func:`tune_process`: the ``perturbd`` command (for an experiment, with its
``train.threads``), a sweep worker (:func:`perturbd.sweep.executors.execute`), a benchmark. The
library never changes process-wide state: :func:`perturbd.train.fit` and
:func:`perturbd.runs.experiment.run` train with the threads and malloc the process has, and a run
records both (``environment.json``: ``threads``, ``malloc``). From Python, call
``tune_process(cfg.train.threads)`` first to train as ``perturbd run`` does.

A run's float results depend on its thread count (oneDNN splits its reductions by thread): same
seed, threads, torch and CPU ⇒ same numbers.
"""

from __future__ import annotations

import os

import torch

from perturbd.malloc import tune_malloc

__all__ = ["cores", "effective_threads", "tune_process"]


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def effective_threads(threads: int | None) -> int:
    """The CPU threads ``train.threads`` means: itself; else a sweep worker's share of the cores
    (``PERTURBD_THREADS``, set by :mod:`perturbd.sweep.executors`); else :func:`cores`."""
    return threads or int(os.environ.get("PERTURBD_THREADS") or 0) or cores()


def tune_process(threads: int | None = None) -> int:
    """Set this process for training: glibc's malloc for tensors (:func:`perturbd.malloc.tune_malloc`,
    once) and torch's CPU threads to :func:`effective_threads` of ``threads``; returns that count."""
    tune_malloc()
    count = effective_threads(threads)
    torch.set_num_threads(count)
    return count
