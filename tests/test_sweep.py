"""Sweeps: expansion and validation, resuming after a kill, failures, twin sharing, Ray."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import perturbd.settings
from perturbd.errors import ConfigError
from perturbd.report.aggregate import collect_runs
from perturbd.sweep import expand, load_sweep, run_sweep, status
from perturbd.sweep import SweepConfig

TINY = {
    "data": {"name": "mnist5k", "train_limit": 300, "test_limit": 100},
    "trigger": {"kind": "grid"},
    "train": {"epochs": 1, "batch_size": 32, "threads": 1},
}
GRID = {"poison.rate": [0.02, 0.05, 0.1], "trigger.amplitude": [6, 10]}


def write_sweep(folder: Path, out: Path, axes=GRID, seeds=(0, 1), **extra) -> Path:
    spec = {"name": "t", "base": TINY, "axes": axes, "seeds": list(seeds), "out": str(out), "workers": 1, **extra}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class CountingFit:
    """Wraps ``settings.fit``: counts trainings by description; can raise Ctrl-C at call N."""

    def __init__(self, real, interrupt_at: int | None = None) -> None:
        self.real, self.interrupt_at, self.calls = real, interrupt_at, []

    def __call__(self, model, data, cfg, seed, **kw):
        self.calls.append(kw.get("description"))
        if self.interrupt_at is not None and self.count("backdoored") == self.interrupt_at:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of a run
        return self.real(model, data, cfg, seed, **kw)

    def count(self, description: str) -> int:
        return sum(c == description for c in self.calls)


# --------------------------------------------------------------------------- expansion


def test_grid_times_seeds_in_order(tmp_path):
    sw = load_sweep(write_sweep(tmp_path, tmp_path / "out"))
    assert len(sw.runs) == 12 and len({c.hash() for c in sw.runs}) == 12
    assert [c.seed for c in sw.runs] == [0] * 6 + [1] * 6
    assert sw.runs[1].poison.rate == 0.02 and sw.runs[1].trigger.amplitude == 10
    assert all(c.data.train_limit == 300 for c in sw.runs)


def test_ranges_linked_axes_and_seed_count():
    spec = SweepConfig(base=TINY, seeds=3, axes={
        "trigger.amplitude": {"range": [4, 12, 4]},
        "poison.rate": {"logspace": [0.01, 0.1, 3]},
        "trigger": [{"kind": "grid"}, {"kind": "chessboard", "amplitude": 3}],
    })
    sw = expand(spec)
    # amplitudes {4, 8} × 3 rates for grid; chessboard fixes c=3, so its two amplitudes coincide (kept once)
    assert len(sw.runs) == (2 * 3 + 1 * 3) * 3
    assert sorted({c.poison.rate for c in sw.runs}) == [0.01, 0.0316228, 0.1]
    chess = [c for c in sw.runs if c.trigger.kind == "chessboard"]
    assert {c.trigger.amplitude for c in chess} == {3}  # the linked value wins over the earlier axis
    assert {c.seed for c in sw.runs} == {0, 1, 2}


def test_variants_are_a_union_and_set_overrides_the_base(tmp_path):
    path = write_sweep(tmp_path, tmp_path / "o", axes={"poison.rate": [0.05, 0.1]}, seeds=[0], variants=[
        {"trigger": {"kind": "grid", "amplitude": 6}},
        {"trigger": {"kind": "chessboard"}, "attack": {"setting": "update"}},
    ])
    sw = load_sweep(path, sets=["train.epochs=2", "data.test_limit=50"])
    assert len(sw.runs) == 2 * 2
    assert [(c.trigger.kind, c.trigger.amplitude, c.attack.setting) for c in sw.runs[::2]] == [("grid", 6, "before_training"), ("chessboard", 10, "update")]
    assert all(c.train.epochs == 2 and c.data.test_limit == 50 and c.data.train_limit == 300 for c in sw.runs)


def test_missing_data_is_reported_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="no folder at"):
        load_sweep(write_sweep(tmp_path, tmp_path / "o", axes={"data.name": ["mnist5k", f"imagefolder:{tmp_path / 'nope'}"]}))


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"poison.rat": [0.1]}, "did you mean 'rate'"),
        ({"poisn.rate": [0.1]}, "did you mean 'poison'"),
        ({"poison.rate": [0.1, 1.5]}, "poison.rate=1.5"),
        ({"trigger.kind": ["grid", "gird"]}, "did you mean 'grid'"),
        ({"model.name": ["cnn28", "cnn99"]}, "unknown model 'cnn99'"),
        ({"seed": [1, 2]}, "seeds"),
        ({"poison.rate": []}, "no values"),
        ({"poison.rate": {"rnage": [1, 2, 1]}}, "did you mean 'range'"),
    ],
)
def test_bad_axis_is_one_line_config_error_before_anything_runs(tmp_path, axes, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as err:
        load_sweep(write_sweep(tmp_path, out, axes=axes))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_ray_missing_or_bad_executor_is_a_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="executor"):
        load_sweep(write_sweep(tmp_path, tmp_path / "o", executor="slurm"))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    sw = load_sweep(write_sweep(tmp_path, tmp_path / "o", axes={"poison.rate": [0.05]}, seeds=[0], executor="ray"))
    with pytest.raises(ConfigError, match=r"perturbd\[ray\]"):
        run_sweep(sw)


# --------------------------------------------------------------------------- resume


@dataclass
class Interrupted:
    out: Path
    first_pass: CountingFit
    second_pass: CountingFit
    kept: dict[str, tuple[float, str]]
    seconds: float


def snapshot(out: Path) -> dict[str, tuple[float, str]]:
    """Finished run directories (not the hidden partial ones): metrics.json mtime and text."""
    return {p.parent.name: (p.stat().st_mtime, p.read_text()) for p in out.glob("*/metrics.json") if not p.parent.name.startswith(".")}


@pytest.fixture(scope="module")
def interrupted_sweep(tmp_path_factory) -> Interrupted:
    """The 12-run sweep, stopped by Ctrl-C in the middle of its 7th run, then run again."""
    folder = tmp_path_factory.mktemp("sweep")
    sw = load_sweep(write_sweep(folder, folder / "out"))
    real = perturbd.settings.fit
    started = time.perf_counter()
    mp = pytest.MonkeyPatch()
    try:
        first = CountingFit(real, interrupt_at=7)
        mp.setattr(perturbd.settings, "fit", first)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(sw)
        kept = snapshot(sw.out)
        second = CountingFit(real)
        mp.setattr(perturbd.settings, "fit", second)
        run_sweep(sw)
    finally:
        mp.undo()
    return Interrupted(sw.out, first, second, kept, time.perf_counter() - started)


def test_killed_sweep_resumes_without_rerunning_finished_runs(interrupted_sweep):
    r = interrupted_sweep
    assert len(r.kept) == 6  # six runs were complete when Ctrl-C hit the seventh
    assert r.second_pass.count("backdoored") == 12 - 6  # only the missing runs trained again
    assert all(snapshot(r.out)[k] == v for k, v in r.kept.items())  # untouched
    assert len(collect_runs(r.out)) == 12
    assert not list(r.out.glob(".tmp-*"))  # the interrupted run left nothing behind
    print(f"12-run sweep incl. interruption and resume: {r.seconds:.1f} s")


def test_clean_twin_is_trained_once_per_seed(interrupted_sweep):
    r = interrupted_sweep
    # seed 0's twin in the first pass; seed 1's twin was stored before Ctrl-C hit its backdoored model
    assert r.first_pass.count("clean twin") == 2 and r.second_pass.count("clean twin") == 0
    assert len([p for p in (r.out / ".twins").iterdir() if p.is_dir()]) == 2
    twins = {}
    for run in collect_runs(r.out):
        twins.setdefault(run.config["seed"], set()).add(run.metrics["clean_twin_accuracy"])
    assert all(len(v) == 1 for v in twins.values())


def test_finished_runs_made_by_other_code_are_named(interrupted_sweep, tmp_path):
    import json
    import shutil

    from perturbd.sweep import made_elsewhere_runs, status

    copy = tmp_path / "out"
    shutil.copytree(interrupted_sweep.out, copy)
    sw = load_sweep(write_sweep(tmp_path, copy))
    st = status(sw)
    assert len(st.done) == 12 and made_elsewhere_runs(sw, st) == []
    one = sorted(copy.glob("*/environment.json"))[0]
    one.write_text(json.dumps({**json.loads(one.read_text()), "git_commit": "0" * 40}))
    assert made_elsewhere_runs(sw, st) == [one.parent]


@pytest.mark.slow
def test_sigkilled_sweep_resumes(tmp_path, monkeypatch):
    """A real SIGKILL (no cleanup at all) in the middle of a run: the partial folder is swept away."""
    out = tmp_path / "out"
    path = write_sweep(tmp_path, out, axes={"poison.rate": [0.05, 0.1]}, seeds=[0, 1])
    proc = subprocess.Popen([sys.executable, "-m", "perturbd", "sweep", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(snapshot(out)) >= 1 and list(out.glob(".tmp-*")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = snapshot(out)
    assert 1 <= len(done) < 4
    counter = CountingFit(perturbd.settings.fit)
    monkeypatch.setattr(perturbd.settings, "fit", counter)
    sw = load_sweep(path)
    assert len(status(sw).done) == len(done)
    run_sweep(sw)
    assert counter.count("backdoored") == 4 - len(done)
    assert all(snapshot(out)[k] == v for k, v in done.items())
    assert not list(out.glob(".tmp-*"))


def test_failed_run_is_recorded_does_not_stop_others_and_is_retried(tmp_path, monkeypatch):
    sw = load_sweep(write_sweep(tmp_path, tmp_path / "out", axes={"poison.rate": [0.05, 0.1]}, seeds=[0]))
    real = perturbd.settings.fit

    def flaky(model, data, cfg, seed, **kw):
        if kw.get("description") == "backdoored" and int((data.labels == 0).sum()) > 50:  # the rate-0.1 run
            raise RuntimeError("simulated out of memory\nsecond line")
        return real(model, data, cfg, seed, **kw)

    monkeypatch.setattr(perturbd.settings, "fit", flaky)
    result = run_sweep(sw)
    assert len(result.finished) == 1 and len(result.failed) == 1
    record = json.loads(next((sw.out / "failures").glob("*.json")).read_text())
    assert record["error"] == "RuntimeError: simulated out of memory" and "Traceback" in record["detail"]
    assert len(status(sw).failed) == 1 and len(status(sw).done) == 1
    monkeypatch.setattr(perturbd.settings, "fit", real)
    again = run_sweep(sw)
    assert len(again.finished) == 1 and not again.failed
    assert not list((sw.out / "failures").glob("*.json"))


@pytest.mark.slow
def test_local_process_pool_matches_in_process(interrupted_sweep, tmp_path):
    """Two spawn workers, one thread each: the same numbers as in this process."""
    path = write_sweep(tmp_path, tmp_path / "pool", axes={"poison.rate": [0.05, 0.1], "trigger.amplitude": [10]}, seeds=[0], workers=2)
    sw = load_sweep(path)
    result = run_sweep(sw)
    assert len(result.finished) == 2 and not result.failed
    assert_same_metrics(sw.out, interrupted_sweep.out)


# --------------------------------------------------------------------------- ray


def assert_same_metrics(a: Path, b: Path) -> None:
    ours = {r.path.name: r.metrics for r in collect_runs(a)}
    theirs = {r.path.name: r.metrics for r in collect_runs(b)}
    assert ours and set(ours) <= set(theirs)
    for name, m in ours.items():
        for key in ("clean_accuracy", "clean_twin_accuracy", "attack_success_rate", "clean_model_asr", "injection_rate", "stealth"):
            assert m[key] == theirs[name][key], (name, key)


@pytest.mark.slow
def test_ray_executor_gives_the_same_metrics(interrupted_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    sw = load_sweep(write_sweep(tmp_path, tmp_path / "ray", executor="ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        result = run_sweep(sw)
        print(f"12-run sweep on local Ray: {time.perf_counter() - started:.1f} s")
    finally:
        ray.shutdown()
    assert len(result.finished) == 12 and not result.failed
    assert_same_metrics(sw.out, interrupted_sweep.out)
