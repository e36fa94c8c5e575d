"""Sweeps: expansion and validation, resuming after a kill, failures, twin sharing, status and the
executor a sweep asks for (the executors themselves: tests/test_executors.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import perturbd.attack.settings.before_training as before_training
import perturbd.runs.twins as twins
from perturbd.errors import ConfigError
from perturbd.report.aggregate import collect_runs
from perturbd.runs.folder import RunDir
from perturbd.sweep.executors import LocalExecutor, RayExecutor
from perturbd.sweep.runner import load_sweep, make_executor, run_sweep, status
from perturbd.train import fit as real_fit

FIT_CALLERS = (twins, before_training)  # where a sweep's runs train: the clean twin, the backdoored model


def patch_fit(mp: pytest.MonkeyPatch, fake) -> None:
    """Replace ``train.fit`` wherever a before-training run calls it."""
    for module in FIT_CALLERS:
        mp.setattr(module, "fit", fake)


class CountingFit:
    """Wraps ``train.fit``: counts trainings by description; can raise Ctrl-C at call N."""

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


def test_grid_times_seeds_in_order(tmp_path, sweep_file):
    sw = load_sweep(sweep_file(tmp_path, tmp_path / "out"))
    assert len(sw.runs) == 12 and len({c.hash() for c in sw.runs}) == 12
    assert [c.seed for c in sw.runs] == [0] * 6 + [1] * 6
    assert sw.runs[1].poison.rate == 0.02 and sw.runs[1].trigger.amplitude == 10
    assert all(c.data.train_limit == 300 for c in sw.runs)


def test_ranges_linked_axes_and_seed_count(tmp_path, sweep_file):
    sw = load_sweep(
        sweep_file(
            tmp_path,
            tmp_path / "o",
            seeds=3,
            axes={
                "trigger.amplitude": {"range": [4, 12, 4]},
                "poison.rate": {"logspace": [0.01, 0.1, 3]},
                "trigger": [{"kind": "grid"}, {"kind": "chessboard", "amplitude": 3}],
            },
        )
    )
    # amplitudes {4, 8} × 3 rates for grid; chessboard fixes c=3, so its two amplitudes coincide (kept once)
    assert len(sw.runs) == (2 * 3 + 1 * 3) * 3
    assert sorted({c.poison.rate for c in sw.runs}) == [0.01, 0.0316228, 0.1]
    chess = [c for c in sw.runs if c.trigger.kind == "chessboard"]
    assert {c.trigger.amplitude for c in chess} == {3}  # the linked value wins over the earlier axis
    assert {c.seed for c in sw.runs} == {0, 1, 2}


def test_variants_are_a_union_and_set_overrides_the_base(tmp_path, sweep_file):
    path = sweep_file(
        tmp_path,
        tmp_path / "o",
        axes={"poison.rate": [0.05, 0.1]},
        seeds=[0],
        variants=[
            {"trigger": {"kind": "grid", "amplitude": 6}},
            {"trigger": {"kind": "chessboard"}, "attack": {"setting": "update"}},
        ],
    )
    sw = load_sweep(path, sets=["train.epochs=2", "data.test_limit=50"])
    assert len(sw.runs) == 2 * 2
    assert [(c.trigger.kind, c.trigger.amplitude, c.attack.setting) for c in sw.runs[::2]] == [
        ("grid", 6, "before_training"),
        ("chessboard", 10, "update"),
    ]
    assert all(c.train.epochs == 2 and c.data.test_limit == 50 and c.data.train_limit == 300 for c in sw.runs)


def test_missing_data_is_reported_before_anything_runs(tmp_path, sweep_file):
    with pytest.raises(ConfigError, match="no folder at"):
        load_sweep(sweep_file(tmp_path, tmp_path / "o", axes={"data.name": ["mnist5k", f"imagefolder:{tmp_path / 'nope'}"]}))


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
def test_bad_axis_is_one_line_config_error_before_anything_runs(tmp_path, sweep_file, axes, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as err:
        load_sweep(sweep_file(tmp_path, out, axes=axes))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_ray_missing_or_bad_executor_is_a_config_error(tmp_path, sweep_file, monkeypatch):
    with pytest.raises(ConfigError, match="executor"):
        load_sweep(sweep_file(tmp_path, tmp_path / "o", executor="slurm"))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    sw = load_sweep(sweep_file(tmp_path, tmp_path / "o", axes={"poison.rate": [0.05]}, seeds=[0], executor="ray"))
    with pytest.raises(ConfigError, match=r"perturbd\[ray\]"):
        run_sweep(sw)


def test_the_executor_is_the_one_the_sweep_asks_for(tmp_path, sweep_file, monkeypatch):
    def executor(**extra):
        sw = load_sweep(sweep_file(tmp_path, tmp_path / "o", **extra))
        return make_executor(sw.spec, len(sw.runs))

    assert executor() == LocalExecutor(1)
    assert executor(workers=3) == LocalExecutor(3)
    monkeypatch.setattr("perturbd.sweep.runner.auto_workers", lambda runs: runs + 100)
    assert executor(workers="auto") == LocalExecutor(12 + 100)  # auto: as many as auto_workers says for the 12 runs
    assert executor(executor="ray") == RayExecutor(None, 1.0, 0.0)
    assert executor(executor="ray", ray={"address": "auto", "num_cpus_per_run": 2, "num_gpus_per_run": 0.5}) == RayExecutor(
        "auto", 2.0, 0.5
    )


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
def interrupted_sweep(tmp_path_factory, sweep_file) -> Interrupted:
    """The 12-run sweep, stopped by Ctrl-C in the middle of its 7th run, then run again."""
    folder = tmp_path_factory.mktemp("sweep")
    sw = load_sweep(sweep_file(folder, folder / "out"))
    started = time.perf_counter()
    mp = pytest.MonkeyPatch()
    try:
        first = CountingFit(real_fit, interrupt_at=7)
        patch_fit(mp, first)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(sw)
        kept = snapshot(sw.out)
        second = CountingFit(real_fit)
        patch_fit(mp, second)
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
        twins.setdefault(run.config["seed"], set()).add(RunDir(run.path).metrics().clean_twin_accuracy)
    assert all(len(v) == 1 for v in twins.values())


def test_finished_runs_made_by_other_code_are_named(interrupted_sweep, tmp_path, sweep_file):
    import shutil

    from perturbd.sweep.runner import made_elsewhere_runs

    copy = tmp_path / "out"
    shutil.copytree(interrupted_sweep.out, copy)
    sw = load_sweep(sweep_file(tmp_path, copy))
    st = status(sw)
    assert len(st.done) == 12 and made_elsewhere_runs(sw, st) == []
    one = sorted(copy.glob("*/environment.json"))[0]
    one.write_text(json.dumps({**json.loads(one.read_text()), "git_commit": "0" * 40}))
    assert made_elsewhere_runs(sw, st) == [one.parent]


@pytest.mark.slow
def test_sigkilled_sweep_resumes(tmp_path, sweep_file, monkeypatch):
    """A real SIGKILL (no cleanup at all) in the middle of a run: the partial folder is swept away."""
    out = tmp_path / "out"
    path = sweep_file(tmp_path, out, axes={"poison.rate": [0.05, 0.1]}, seeds=[0, 1])
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
    counter = CountingFit(real_fit)
    patch_fit(monkeypatch, counter)
    sw = load_sweep(path)
    assert len(status(sw).done) == len(done)
    run_sweep(sw)
    assert counter.count("backdoored") == 4 - len(done)
    assert all(snapshot(out)[k] == v for k, v in done.items())
    assert not list(out.glob(".tmp-*"))


def test_failed_run_is_recorded_does_not_stop_others_and_is_retried(tmp_path, sweep_file, monkeypatch):
    sw = load_sweep(sweep_file(tmp_path, tmp_path / "out", axes={"poison.rate": [0.05, 0.1]}, seeds=[0]))
    real = real_fit

    def flaky(model, data, cfg, seed, **kw):
        if (
            kw.get("description") == "backdoored" and int((data.labels == 0).sum()) > 42
        ):  # the rate-0.1 run: 24 + 24 images of class 0, not 24 + 12
            raise RuntimeError("simulated out of memory\nsecond line")
        return real(model, data, cfg, seed, **kw)

    patch_fit(monkeypatch, flaky)
    result = run_sweep(sw)
    assert len(result.finished) == 1 and len(result.failed) == 1
    record = json.loads(next((sw.out / "failures").glob("*.json")).read_text())
    assert record["error"] == "RuntimeError: simulated out of memory" and "Traceback" in record["detail"]
    assert len(status(sw).failed) == 1 and len(status(sw).done) == 1
    patch_fit(monkeypatch, real)
    again = run_sweep(sw)
    assert len(again.finished) == 1 and not again.failed
    assert not list((sw.out / "failures").glob("*.json"))
