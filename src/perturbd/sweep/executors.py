"""Where a sweep's runs execute: ``local`` (in this process, or a small process pool) or ``ray``.

Every executor runs :func:`execute` once per run and hands back an :class:`Outcome`; it never
raises for a failing run (the sweep records the failure and goes on). Run directories are written
by the worker straight into ``out`` (on a Ray cluster, ``out`` must be on a filesystem every node
sees, e.g. NFS); the atomic rename of :mod:`perturbd.runs.rundir` keeps them whole.

A worker is an entry point: before each run it sets the process for training
(:func:`perturbd.process.tune_process`: glibc's malloc, and the run's ``train.threads``). A
worker given ``threads`` sets ``PERTURBD_THREADS`` (which
:func:`perturbd.process.effective_threads` honours for runs whose ``train.threads`` is unset), so
that N workers on C cores use C // N threads each and never more threads than cores. A run's
float results depend on its thread count: a run of a 2-worker sweep on 2 cores equals
``perturbd run --set train.threads=1``; ``environment.json`` records it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import torch

from perturbd.config import ExperimentConfig
from perturbd.errors import ConfigError, PerturbdError
from perturbd.process import cores, tune_process
from perturbd.runs.experiment import run
from perturbd.runs.results import RunMetrics

OnStart = Callable[[ExperimentConfig], None]
OnDone = Callable[["Outcome"], None]


@dataclass
class Outcome:
    """One run's result: its directory and metrics, or its error as one line (plus a traceback
    for an unexpected exception)."""

    cfg: ExperimentConfig
    ok: bool
    run_dir: Path | None = None
    metrics: RunMetrics | None = None
    skipped: bool = False
    error: str = ""
    error_type: str = ""
    detail: str = ""
    seconds: float = 0.0


def use_threads(threads: int | None) -> None:
    """Make this worker's runs whose ``train.threads`` is unset use ``threads`` CPU threads (None:
    all cores), set by :func:`execute` before each run."""
    if threads:
        os.environ["PERTURBD_THREADS"] = str(threads)


def execute(
    cfg: ExperimentConfig,
    out: Path,
    twin_cache: Path | None,
    threads: int | None = None,
    monitor: Any = None,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Run one experiment; a failure comes back as an :class:`Outcome`, never as an exception
    (except Ctrl-C, which stops the sweep; its partial run directory is removed). Sets this
    process's malloc and threads for the run first (:func:`perturbd.process.tune_process`)."""
    use_threads(threads)
    started = time.perf_counter()
    try:
        tune_process(cfg.train.threads)
        result = run(cfg, Path(out), monitor=monitor, log=log, twin_cache=twin_cache)
    except PerturbdError as err:
        return Outcome(cfg, False, error=str(err), error_type=type(err).__name__, seconds=time.perf_counter() - started)
    except Exception as err:  # a bug or a resource error: recorded, the sweep goes on
        first = (str(err).strip().splitlines() or [""])[0]
        return Outcome(
            cfg,
            False,
            error=f"{type(err).__name__}: {first}"[:500],
            error_type=type(err).__name__,
            detail=traceback.format_exc()[-6000:],
            seconds=time.perf_counter() - started,
        )
    return Outcome(cfg, True, result.run_dir, result.metrics, result.skipped, seconds=time.perf_counter() - started)


class Executor(Protocol):
    def run(
        self,
        todo: list[ExperimentConfig],
        out: Path,
        twin_cache: Path | None,
        *,
        on_start: OnStart | None = None,
        on_done: OnDone | None = None,
        monitor: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None: ...


BUSY_LOAD = 0.5  # a 1-minute load average above this share of the cores means others use them


def busy_warning() -> str | None:
    """One line when the machine is already busy (1-minute load average above
    :data:`BUSY_LOAD` × cores): runs will be slower and their timings say more about the
    neighbours; ``None`` on a quiet machine (or where the load cannot be read)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load <= BUSY_LOAD * cores():
        return None
    return (
        f"the machine is already busy (1-minute load {load:.1f} on {cores()} cores): runs will be slower, their timings noisy; "
        "--workers 1 shares the cores least"
    )


def auto_workers(runs: int) -> int:
    """In-process on small machines and GPUs; otherwise one worker per 4 cores."""
    if torch.cuda.is_available() or cores() < 8:
        return 1
    return max(1, min(runs, cores() // 4))


def seeds_in_turn(todo: list[ExperimentConfig]) -> list[ExperimentConfig]:
    """``todo`` reordered so that runs of different seeds alternate: the first run of every seed
    trains (or computes) what the seed's other runs share — the clean twin, an adaptive mask —
    and workers that start together would otherwise wait on each other's lock for it."""
    by_seed: dict[int, list[ExperimentConfig]] = {}
    for cfg in todo:
        by_seed.setdefault(cfg.seed, []).append(cfg)
    queues = list(by_seed.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


@dataclass
class LocalExecutor:
    """``workers == 1``: runs one after the other in this process (progress bars, Ctrl-C safe).
    ``workers > 1``: a spawn process pool, ``cores // workers`` torch threads per worker, the
    runs handed out seed by seed in turn (:func:`seeds_in_turn`)."""

    workers: int = 1

    def run(self, todo, out, twin_cache, *, on_start=None, on_done=None, monitor=None, log=None):  # type: ignore[no-untyped-def]
        out = Path(out).resolve()
        if self.workers <= 1 or len(todo) <= 1:
            for cfg in todo:
                if on_start:
                    on_start(cfg)
                outcome = execute(cfg, out, twin_cache, None, monitor, log)
                if on_done:
                    on_done(outcome)
            return
        threads = max(1, cores() // self.workers)
        ctx = get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=use_threads, initargs=(threads,)) as pool:
            futures: dict[Future[Outcome], ExperimentConfig] = {}
            for cfg in seeds_in_turn(todo):
                futures[pool.submit(execute, cfg, out, twin_cache, threads)] = cfg
                if on_start:
                    on_start(cfg)
            try:
                for fut in as_completed(futures):
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        outcome = Outcome(
                            futures[fut],
                            False,
                            error="worker process died (killed or out of memory); rerun the sweep to retry",
                            error_type="WorkerDied",
                        )
                    if on_done:
                        on_done(outcome)
            except BaseException:  # Ctrl-C, or on_done stopping the sweep: the runs not started are not started
                for fut in futures:
                    fut.cancel()
                raise


def _ray_task(cfg: ExperimentConfig, out: str, twin_cache: str | None, threads: int) -> Outcome:
    return execute(cfg, Path(out), Path(twin_cache) if twin_cache else None, threads)


@dataclass
class RayExecutor:
    """One Ray task per run on the cluster at ``address`` (or a local Ray started on demand,
    shut down afterwards). ``num_cpus``/``num_gpus`` are each task's resource request."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def run(self, todo, out, twin_cache, *, on_start=None, on_done=None, monitor=None, log=None):  # type: ignore[no-untyped-def]
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "executor 'ray' needs Ray, which is not installed; pip install 'perturbd[ray]' or use executor: local"
            ) from None
        if not todo:
            return
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as err:
                raise ConfigError(
                    f"cannot reach the Ray cluster at '{self.address}' ({err}); check ray.address or start it with `ray start --head`"
                ) from None
        try:
            self._run(ray, todo, Path(out).resolve(), twin_cache, on_start, on_done)
        finally:
            if started_here:
                ray.shutdown()

    def _run(
        self, ray: Any, todo: list[ExperimentConfig], out: Path, twin_cache: Path | None, on_start: OnStart | None, on_done: OnDone | None
    ) -> None:
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(_ray_task)
        threads = max(1, int(self.num_cpus))
        cache = str(Path(twin_cache).resolve()) if twin_cache else None
        refs = {}
        for cfg in todo:
            refs[task.remote(cfg, str(out), cache, threads)] = cfg
            if on_start:
                on_start(cfg)
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ref = ready[0]
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as err:
                    first = (str(err).strip().splitlines() or [""])[0]
                    outcome = Outcome(
                        refs[ref], False, error=f"Ray task failed: {first}"[:500], error_type=type(err).__name__, detail=str(err)[-6000:]
                    )
                if on_done:
                    on_done(outcome)
        except BaseException:  # Ctrl-C, or on_done stopping the sweep
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
