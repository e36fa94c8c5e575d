"""Shared fixtures: a private cache folder, and a tiny, seconds-long experiment config."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from perturbd.config import ExperimentConfig, load_config


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded data sets are cached per test session, never in the user's home."""
    if "PERTURBD_CACHE" not in os.environ:
        os.environ["PERTURBD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


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
