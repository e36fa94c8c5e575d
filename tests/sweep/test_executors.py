"""Executors: one run becomes an Outcome, never an exception; in-process and pooled local runs,
a dead worker, Ray (a stand-in for its API, and a real local instance in the slow tests)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import perturbd.sweep.executors as executors
from perturbd.config import load_config
from perturbd.errors import ConfigError, OutputError
from perturbd.report.aggregate import collect_runs
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import run_dir_for
from perturbd.sweep.executors import LocalExecutor, Outcome, RayExecutor, auto_workers, execute
from perturbd.sweep.runner import load_sweep, run_sweep


@pytest.fixture
def configs(tiny_config):
    """Two distinct experiment configs (nothing here trains them)."""
    return [tiny_config, tiny_config.model_copy(update={"seed": 1})]


@pytest.fixture
def threads_restored(monkeypatch):
    """Undo what a worker's thread setting does to this process."""
    monkeypatch.delenv("PERTURBD_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- execute


def test_a_user_error_comes_back_as_an_outcome_and_leaves_no_directory(tmp_path, synthetic_overrides) -> None:
    cfg = load_config(overrides=[*synthetic_overrides, "data.train_limit=300", "poison.target=10"])
    outcome = execute(cfg, tmp_path, None)
    assert not outcome.ok and outcome.cfg is cfg and outcome.run_dir is None and outcome.metrics is None
    assert outcome.error_type == "ConfigError" and outcome.detail == ""
    assert "poison.target must be in [0, 9], got 10" in outcome.error and "\n" not in outcome.error
    assert not run_dir_for(cfg, tmp_path).exists() and not list(tmp_path.glob(".tmp-*"))


def test_an_unexpected_exception_comes_back_with_its_first_line_and_traceback(tmp_path, configs, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise RuntimeError("simulated out of memory\nsecond line")

    monkeypatch.setattr(executors, "run", crash)
    outcome = execute(configs[0], tmp_path, None)
    assert not outcome.ok and outcome.error == "RuntimeError: simulated out of memory" and outcome.error_type == "RuntimeError"
    assert "Traceback" in outcome.detail and "second line" in outcome.detail and outcome.seconds >= 0

    def long_crash(*args, **kwargs):
        raise OSError("x" * 2000)

    monkeypatch.setattr(executors, "run", long_crash)
    outcome = execute(configs[0], tmp_path, None)
    assert len(outcome.error) == 500 and outcome.error.startswith("OSError: xxx")


def test_ctrl_c_is_not_swallowed(tmp_path, configs, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(configs[0], tmp_path, None)


def test_a_finished_run_is_an_ok_outcome(tmp_path, configs, monkeypatch, threads_restored) -> None:
    calls = []

    def finished(cfg, out, monitor=None, log=None, twin_cache=None):
        calls.append((cfg, out, twin_cache))
        return types.SimpleNamespace(run_dir=out / "r", metrics={"clean_accuracy": 0.9}, skipped=True)

    monkeypatch.setattr(executors, "run", finished)
    outcome = execute(configs[0], tmp_path, tmp_path / ".twins", threads=1)
    assert outcome == Outcome(configs[0], True, tmp_path / "r", {"clean_accuracy": 0.9}, True, seconds=outcome.seconds)
    assert calls == [(configs[0], tmp_path, tmp_path / ".twins")]
    assert os.environ["PERTURBD_THREADS"] == "1" and torch.get_num_threads() == 1  # a worker's share of the cores


# --------------------------------------------------------------------------- local


@pytest.mark.parametrize(
    ("cuda", "cores", "runs", "workers"),
    [(True, 64, 20, 1), (False, 4, 20, 1), (False, 7, 20, 1), (False, 8, 20, 2), (False, 32, 100, 8), (False, 32, 3, 3), (False, 32, 0, 1)],
)
def test_auto_workers(monkeypatch, cuda: bool, cores: int, runs: int, workers: int) -> None:
    monkeypatch.setattr(executors.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(executors, "cores", lambda: cores)
    assert auto_workers(runs) == workers


def record_execute(monkeypatch, events: list):
    def fake(cfg, out, twin_cache, threads=None, monitor=None, log=None):
        events.append(("run", cfg.seed, out, twin_cache, threads))
        return Outcome(cfg, True)

    monkeypatch.setattr(executors, "execute", fake)


@pytest.mark.parametrize("workers", [1, 4])
def test_in_process_runs_one_after_the_other(tmp_path, configs, monkeypatch, workers) -> None:
    events: list = []
    record_execute(monkeypatch, events)
    monkeypatch.chdir(tmp_path)
    todo = configs if workers == 1 else configs[:1]  # a single run never starts a pool
    LocalExecutor(workers).run(todo, Path("out"), tmp_path / ".twins",
                               on_start=lambda c: events.append(("start", c.seed)),
                               on_done=lambda o: events.append(("done", o.cfg.seed, o.ok)))  # fmt: skip
    out = tmp_path / "out"  # made absolute before any run changes the working directory
    expected = [[("start", s), ("run", s, out, tmp_path / ".twins", None), ("done", s, True)] for s in (c.seed for c in todo)]
    assert events == [e for run in expected for e in run]


def die(*args, **kwargs):
    os._exit(3)  # as the OOM killer would: no exception, no cleanup


def test_a_dead_worker_is_a_failed_outcome_not_a_crash(tmp_path, configs, monkeypatch) -> None:
    asked = []

    def context(method):
        asked.append(method)
        return multiprocessing.get_context("fork")  # fork: no interpreter start-up (spawn is used for real)

    monkeypatch.setattr(executors, "get_context", context)
    monkeypatch.setattr(executors, "use_threads", lambda threads: None)  # nothing to set in a forked child
    monkeypatch.setattr(executors, "execute", die)
    started, done = [], []
    LocalExecutor(2).run(configs, tmp_path, None, on_start=started.append, on_done=done.append)
    assert asked == ["spawn"] and started == configs
    assert sorted(o.cfg.seed for o in done) == [0, 1]
    for o in done:
        assert not o.ok and o.error_type == "WorkerDied"
        assert o.error == "worker process died (killed or out of memory); rerun the sweep to retry"


def slow_no_space(cfg, out, twin_cache, threads=None, monitor=None, log=None) -> Outcome:
    """A run that says it started (a file in ``out``), then finds the disk full."""
    (Path(out) / f"started-{cfg.seed}").touch()
    time.sleep(0.5)
    return Outcome(cfg, False, error=f"cannot write {out}: no space left on the device", error_type="OutputError")


def test_a_sweep_stopped_by_on_done_starts_no_further_run(tmp_path, tiny_config, monkeypatch) -> None:
    """The runner stops a sweep on a full disk by raising from ``on_done``: the pool's runs not yet
    started are cancelled (at most those running and the pool's few queued ones go on)."""
    monkeypatch.setattr(executors, "get_context", lambda method: multiprocessing.get_context("fork"))
    monkeypatch.setattr(executors, "use_threads", lambda threads: None)
    monkeypatch.setattr(executors, "execute", slow_no_space)
    todo = [tiny_config.model_copy(update={"seed": s}) for s in range(20)]

    def stop(outcome: Outcome) -> None:
        raise OutputError(outcome.error)

    with pytest.raises(OutputError, match="no space left"):
        LocalExecutor(2).run(todo, tmp_path, None, on_done=stop)
    started = len(list(tmp_path.glob("started-*")))
    assert 1 <= started <= 8, f"{started} of 20 runs started"  # 2 running, 3 queued, 2 begun meanwhile, 1 of margin


# --------------------------------------------------------------------------- ray


class FakeRay(types.ModuleType):
    """What RayExecutor uses of Ray, run in this process; tasks listed in ``crash`` raise RayError."""

    class RayError(Exception):
        pass

    def __init__(self, crash=(), unreachable=False) -> None:
        super().__init__("ray")
        self.exceptions = types.SimpleNamespace(RayError=FakeRay.RayError)
        self.crash, self.unreachable = set(crash), unreachable
        self.log: list = []
        self.up = False

    def is_initialized(self) -> bool:
        return self.up

    def init(self, **kwargs) -> None:
        self.log.append(("init", kwargs))
        if self.unreachable:
            raise ConnectionError("no cluster")
        self.up = True

    def shutdown(self) -> None:
        self.log.append(("shutdown",))
        self.up = False

    def remote(self, **resources):
        self.log.append(("remote", resources))
        ray = self

        def wrap(fn):
            return types.SimpleNamespace(remote=lambda *args: ray.log.append(("task", args)) or Ref(fn, args))

        return wrap

    def wait(self, pending, num_returns=1):
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref):
        if ref.args[0].seed in self.crash:
            raise FakeRay.RayError("worker crashed\nits log")
        return ref.fn(*ref.args)


class Ref:
    """A task's handle: hashable, as Ray's object refs are."""

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args


def test_ray_runs_one_task_per_run_and_reports_crashed_tasks(tmp_path, configs, monkeypatch) -> None:
    ray = FakeRay(crash={1})
    monkeypatch.setitem(sys.modules, "ray", ray)
    events: list = []
    record_execute(monkeypatch, events)
    done: list = []
    monkeypatch.chdir(tmp_path)
    RayExecutor("ray://head:10001", num_cpus=2.0, num_gpus=0.5).run(configs, Path("out"), Path(".twins"), on_done=done.append)
    assert ray.log[0] == ("init", {"address": "ray://head:10001", "include_dashboard": False, "log_to_driver": False})
    assert ray.log[1] == ("remote", {"num_cpus": 2.0, "num_gpus": 0.5, "max_retries": 0})
    assert [e for e in ray.log if e[0] == "task"] == [("task", (c, str(tmp_path / "out"), str(tmp_path / ".twins"), 2)) for c in configs]
    assert ray.log[-1] == ("shutdown",) and not ray.up  # started here, so shut down here
    assert events == [("run", 0, tmp_path / "out", tmp_path / ".twins", 2)]  # the crashed task never returned
    ok, crashed = done
    assert ok.ok and not crashed.ok and crashed.cfg is configs[1]
    assert crashed.error == "Ray task failed: worker crashed" and crashed.error_type == "RayError" and "its log" in crashed.detail


def test_ray_already_running_is_left_running(tmp_path, configs, monkeypatch) -> None:
    ray = FakeRay()
    ray.up = True
    monkeypatch.setitem(sys.modules, "ray", ray)
    record_execute(monkeypatch, [])
    RayExecutor().run(configs, tmp_path, None)
    assert ray.up and not [e for e in ray.log if e[0] in ("init", "shutdown")]
    assert [e[1][2] for e in ray.log if e[0] == "task"] == [None, None]  # no twin cache


def test_ray_unreachable_missing_or_idle(tmp_path, configs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", FakeRay(unreachable=True))
    with pytest.raises(ConfigError, match=r"^cannot reach the Ray cluster at 'ray://x:1' \(no cluster\); check ray.address"):
        RayExecutor("ray://x:1").run(configs, tmp_path, None)
    idle = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", idle)
    RayExecutor().run([], tmp_path, None)
    assert idle.log == []  # nothing to run: no cluster started
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ConfigError, match=r"pip install 'perturbd\[ray\]' or use executor: local"):
        RayExecutor().run(configs, tmp_path, None)


# --------------------------------------------------------------------------- the real thing (slow)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, sweep_file) -> Path:
    """The 12-run sweep, run in this process: the numbers every executor must reproduce."""
    folder = tmp_path_factory.mktemp("in-process")
    sw = load_sweep(sweep_file(folder, folder / "out"))
    result = run_sweep(sw)
    assert len(result.finished) == 12 and not result.failed
    return sw.out


def assert_same_metrics(a: Path, b: Path) -> None:
    ours = {r.path.name: RunDir(r.path).metrics() for r in collect_runs(a)}
    theirs = {r.path.name: RunDir(r.path).metrics() for r in collect_runs(b)}
    assert ours and set(ours) <= set(theirs)
    for name, m in ours.items():
        for key in ("clean_accuracy", "clean_twin_accuracy", "attack_success_rate", "clean_model_asr", "injection_rate", "stealth"):
            assert getattr(m, key) == getattr(theirs[name], key), (name, key)


@pytest.mark.slow
def test_local_process_pool_matches_in_process(in_process, tmp_path, sweep_file):
    """Two spawn workers, one thread each: the same numbers as in this process."""
    path = sweep_file(tmp_path, tmp_path / "pool", axes={"poison.rate": [0.05, 0.1], "trigger.amplitude": [10]}, seeds=[0], workers=2)
    sw = load_sweep(path)
    result = run_sweep(sw)
    assert len(result.finished) == 2 and not result.failed
    assert_same_metrics(sw.out, in_process)


@pytest.mark.slow
def test_ray_executor_gives_the_same_metrics(in_process, tmp_path, sweep_file):
    ray = pytest.importorskip("ray")
    sw = load_sweep(sweep_file(tmp_path, tmp_path / "ray", executor="ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        result = run_sweep(sw)
        print(f"12-run sweep on local Ray: {time.perf_counter() - started:.1f} s")
    finally:
        ray.shutdown()
    assert len(result.finished) == 12 and not result.failed
    assert_same_metrics(sw.out, in_process)


def test_a_busy_machine_is_named_in_one_line(monkeypatch) -> None:
    import perturbd.sweep.executors as executors

    monkeypatch.setattr(executors, "cores", lambda: 2)
    monkeypatch.setattr(executors.os, "getloadavg", lambda: (3.8, 3.0, 2.5))
    line = executors.busy_warning()
    assert line is not None and "load 3.8 on 2 cores" in line and "\n" not in line
    monkeypatch.setattr(executors.os, "getloadavg", lambda: (0.4, 0.3, 0.2))
    assert executors.busy_warning() is None


def test_parallel_workers_get_the_seeds_in_turn() -> None:
    from perturbd.config import load_config
    from perturbd.sweep.executors import seeds_in_turn

    todo = [load_config(overrides=[f"seed={s}", f"poison.rate={r}"]) for s in (0, 1) for r in (0.01, 0.02, 0.05)]
    order = seeds_in_turn(todo)
    assert [c.seed for c in order] == [0, 1, 0, 1, 0, 1] and sorted(c.hash() for c in order) == sorted(c.hash() for c in todo)
