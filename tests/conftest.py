"""Shared fixtures: a private cache folder, a tiny, seconds-long experiment config, a finished run
directory with defences (``run_dir``; ``tiny_run``: its overrides without them), and the scripts
under ``experiments/`` as modules; the planted backdoors of :mod:`planted` (``planted``,
``updates``, ``mitigates``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from perturbd.config import ExperimentConfig, load_config
from perturbd.process import tune_process
from perturbd.runs.experiment import run
from perturbd.runs.results import RunMetrics, Stealth, TriggerNorms

# the planted backdoors of the defence and the evaluation tests (tests/planted.py)
pytest_plugins = ["planted"]

# a whole experiment in seconds: synthetic bars, a 3×3 patch, three defences of three kinds
TINY_RUN = [
    "data.name=synthetic", "data.train_limit=500", "data.test_limit=200", "train.epochs=2", "train.batch_size=50",
    "train.device=cpu", "train.threads=1", "trigger.kind=patch", "trigger.amplitude=255", "poison.rate=0.05",
]  # fmt: skip
RUN_DEFENSES = (
    "defenses=[spectral_signature, {name: neural_cleanse, params: {epochs: 2, batch_size: 4, n_clean: 50}},"
    " {name: fine_tuning, params: {n_clean: 50, epochs: 1}}]"
)


def hand_metrics(**extra) -> RunMetrics:
    """A before-training run's metrics, built by hand (what a test writes where a finished run's
    ``metrics.json`` is read); ``extra`` sets or adds parts."""
    fields = dict(
        config_hash="0123abcd", seed=1, setting="before_training", knowledge="full", target=0,
        clean_accuracy=0.981, clean_twin_accuracy=0.985, accuracy_loss=0.004, attack_success_rate=0.97,
        clean_model_asr=0.012, injection_rate=0.1, poisoned_count=100, poison_set_size=1000, test_size=300,
        trigger=TriggerNorms(kind="grid", linf=24.0, l2=336.0),
        stealth=Stealth(linf_mean=23.5, linf_max=24.0, l2_mean=300.2, l2_max=336.0, psnr_mean=31.2, psnr_min=29.9,
                        ssim_mean=0.91, ssim_min=0.85),
    )  # fmt: skip
    return RunMetrics(**{**fields, **extra})


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """The test session is an entry point (:mod:`perturbd.process`; the library never sets threads):
    one CPU thread, as every tiny config asks (``train.threads=1``)."""
    tune_process(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded data sets are cached per test session, never in the user's home."""
    if "PERTURBD_CACHE" not in os.environ:
        os.environ["PERTURBD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def load_experiment(name: str) -> ModuleType:
    """The script ``experiments/<name>.py`` imported as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the ``perturbd`` console entry point in-process: ``cli("run", ...) -> (exit code, stdout, stderr)``."""
    from perturbd.cli import main

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["perturbd", *args])
        code = 0
        try:
            main()
        except SystemExit as stop:
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


@pytest.fixture
def data_root() -> Path:
    """The shared data sets (full MNIST, CIFAR-10 JPEG), from ``PERTURBD_DATA_ROOT``; skip without."""
    root = os.environ.get("PERTURBD_DATA_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("set PERTURBD_DATA_ROOT to the shared data sets folder")
    return Path(root)


TINY = [
    "data.train_limit=1000",
    "data.test_limit=300",
    "train.epochs=4",
    "train.batch_size=64",
    "train.lr=0.05",
    "train.device=cpu",
    "poison.rate=0.1",
    "trigger.amplitude=24",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """``--set`` values for a whole mnist5k experiment in seconds on 2 cores."""
    return list(TINY)


@pytest.fixture
def tiny_config(tiny_overrides: list[str]) -> ExperimentConfig:
    """mnist5k, 1,000 training images, a few epochs."""
    return load_config(overrides=tiny_overrides)


SYNTHETIC = ["data.name=synthetic", "train.epochs=1", "train.batch_size=64", "train.device=cpu"]


@pytest.fixture
def synthetic_overrides() -> list[str]:
    """``--set`` values for a run on the synthetic bars that trains for about a second: one epoch
    on the CPU (tests add their data limits and attack)."""
    return list(SYNTHETIC)


SWEEP_BASE = {
    "data": {"name": "mnist5k", "train_limit": 300, "test_limit": 100},
    "trigger": {"kind": "grid"},
    "train": {"epochs": 1, "batch_size": 32, "threads": 1},
}
SWEEP_GRID = {"poison.rate": [0.02, 0.05, 0.1], "trigger.amplitude": [6, 10]}


@pytest.fixture(scope="session")
def sweep_file() -> Callable[..., Path]:
    """Factory: ``sweep_file(folder, out, axes=SWEEP_GRID, seeds=(0, 1), **extra)`` writes
    ``folder/sweep.yaml``, a sweep over a one-epoch mnist5k base (300 training images), run in
    this process unless ``extra`` says otherwise; the default grid is 6 points × 2 seeds."""
    import yaml

    def write(folder: Path, out: Path, axes: dict | None = None, seeds=(0, 1), **extra) -> Path:
        axes = SWEEP_GRID if axes is None else axes
        spec = {
            "name": "t",
            "base": SWEEP_BASE,
            "axes": axes,
            "seeds": seeds if isinstance(seeds, int) else list(seeds),
            "out": str(out),
            "workers": 1,
            **extra,
        }
        path = Path(folder) / "sweep.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))  # axes in the order given: later axes win
        return path

    return write


@pytest.fixture
def tiny_run() -> list[str]:
    """``--set`` values of a whole experiment on the synthetic bars in seconds (no defences)."""
    return list(TINY_RUN)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory of :data:`TINY_RUN` with :data:`RUN_DEFENSES`."""
    return run(load_config(overrides=[*TINY_RUN, RUN_DEFENSES]), tmp_path_factory.mktemp("runs")).run_dir
