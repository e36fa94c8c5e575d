"""Sweeps: a base experiment × a grid of config values × seeds, run resumably.

The sweep file and its expansion into run configs are in :mod:`perturbd.sweep.config` (no torch:
a mistake in it is answered at once); :func:`load_sweep` also checks every name the runs use.

Each run is an ordinary run directory ``<out>/<name>-<hash8>/`` (see :mod:`perturbd.runs.rundir`):
a run whose directory exists is done and never rerun, so a killed sweep resumes where it stopped.
A run that fails is recorded in ``<out>/failures/<name>-<hash8>.json`` (one-line error) and does
not stop the others; running the sweep again retries it. Clean twins are shared through
``<out>/.twins/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perturbd.config import ExperimentConfig
from perturbd.errors import OutputError
from perturbd.runs.experiment import check_config
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import check_output, clear_failure, failure_path, record_failure, run_dir_for, user_os_errors, write_json
from perturbd.sweep.config import TWINS, RayConfig, Sweep, SweepConfig, expand, read_sweep
from perturbd.sweep.executors import Executor, LocalExecutor, RayExecutor, auto_workers

__all__ = [
    "TWINS", "RayConfig", "Status", "Sweep", "SweepConfig", "SweepResult", "check_sweep", "expand", "load_sweep",
    "made_elsewhere_runs", "make_executor", "read_sweep", "run_sweep", "status",
]  # fmt: skip


# --------------------------------------------------------------------------- loading


def check_sweep(sweep: Sweep) -> Sweep:
    """Check every name the runs of ``sweep`` use (data present, trigger, model, setting,
    defences: :func:`~perturbd.runs.experiment.check_config`), once per config without its seed."""
    for cfg in {c.model_dump_json(exclude={"seed"}): c for c in sweep.runs}.values():
        check_config(cfg)
    longest = max((run_dir_for(c, sweep.out).name for c in sweep.runs), key=len, default="")
    check_output(sweep.out, "out:", longest)
    return sweep


def load_sweep(path: Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> Sweep:
    """Read a sweep file and expand it (:func:`~perturbd.sweep.config.read_sweep`); every run's
    config and every name it uses are checked before anything runs."""
    return check_sweep(read_sweep(path, overrides, sets))


@dataclass
class Status:
    """Which runs of a sweep are done, failed before (to retry) or pending."""

    done: list[ExperimentConfig]
    failed: list[ExperimentConfig]
    pending: list[ExperimentConfig]

    @property
    def todo(self) -> int:
        return len(self.failed) + len(self.pending)


def status(sweep: Sweep) -> Status:
    done, failed, pending = [], [], []
    for cfg in sweep.runs:
        if run_dir_for(cfg, sweep.out).is_dir():
            done.append(cfg)
        elif failure_path(cfg, sweep.out).is_file():
            failed.append(cfg)
        else:
            pending.append(cfg)
    return Status(done, failed, pending)


def made_elsewhere_runs(sweep: Sweep, state: Status) -> list[Path]:
    """The finished run directories of ``sweep`` that another perturbd version or commit made:
    they are kept and not rerun (their config hash matches), so the user is told."""
    return [folder for folder in (run_dir_for(c, sweep.out) for c in state.done) if RunDir(folder).made_elsewhere()]


# --------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    out: Path
    total: int
    already_done: int
    finished: list[Path]
    failed: list[dict[str, Any]]
    seconds: float


def run_sweep(
    sweep: Sweep,
    *,
    on_start: Callable[[ExperimentConfig], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    monitor: Any = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every run of ``sweep`` that has no run directory yet, with the sweep's executor.

    Failed runs are recorded and retried on the next call; a finished run clears its record.
    ``on_done`` receives each :class:`~perturbd.sweep.executors.Outcome` as it arrives.

    Raises:
        OutputError: a run could not write to ``out`` (no space left, read-only, permission
            denied): every other run would fail the same way, so the sweep stops there, runs not
            started are not started and the failure is not recorded (the disk may take no record);
            finished runs are kept, and the same command goes on once the cause is fixed.
    """
    out = sweep.out
    with user_os_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.yaml").write_text(_dump_spec(sweep))
        write_json(out / "sweep.json", {"name": sweep.spec.name, "runs": [run_dir_for(c, out).name for c in sweep.runs]})
    state = status(sweep)
    done_hashes = {c.hash() for c in state.done}
    todo = [c for c in sweep.runs if c.hash() not in done_hashes]
    started = time.perf_counter()
    finished: list[Path] = []
    failed: list[dict[str, Any]] = []

    def done(outcome: Any) -> None:
        cfg = outcome.cfg
        if not outcome.ok and outcome.error_type == OutputError.__name__:
            raise OutputError(outcome.error)
        if outcome.ok:
            with user_os_errors(out):
                clear_failure(cfg, out)
            finished.append(outcome.run_dir)
        else:
            with user_os_errors(out):
                record_failure(cfg, out, outcome.error, outcome.error_type, outcome.detail)
            failed.append({"config_hash": cfg.hash(), "name": cfg.run_name, "error": outcome.error})
        if on_done:
            on_done(outcome)

    executor = make_executor(sweep.spec, len(todo))
    executor.run(todo, out, sweep.twin_cache, on_start=on_start, on_done=done, monitor=monitor, log=log)
    return SweepResult(out, len(sweep.runs), len(state.done), finished, failed, time.perf_counter() - started)


def make_executor(spec: SweepConfig, runs: int) -> Executor:
    """The executor a sweep asks for."""
    if spec.executor == "ray":
        return RayExecutor(spec.ray.address, spec.ray.num_cpus_per_run, spec.ray.num_gpus_per_run)
    workers = auto_workers(runs) if spec.workers == "auto" else int(spec.workers)
    return LocalExecutor(workers)


def _dump_spec(sweep: Sweep) -> str:
    text: str = yaml.safe_dump(sweep.spec.model_dump(mode="json"), sort_keys=False)
    return text
