"""Process tuning (:mod:`perturbd.process`): only entry points set threads and malloc; the
library (``fit``, ``run``) leaves a notebook's process as it found it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from perturbd.malloc import malloc_state
from perturbd.process import effective_threads, tune_process

# a notebook: its own thread count, then perturbd's trainer and a whole run
NOTEBOOK = """
import torch
torch.set_num_threads(3)
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.malloc import malloc_state
from perturbd.models import get_model
from perturbd.runs.experiment import run
from perturbd.train import fit
cfg = load_config(overrides=["data.name=synthetic", "data.train_limit=400", "data.test_limit=100", "train.epochs=1", "train.batch_size=50",
                             "train.device=cpu", "train.threads=1", "trigger.kind=patch", "poison.rate=0.05"])
split = load_data(cfg.data, 0)
fit(get_model("cnn28", split.train.image_shape, split.train.num_classes, seed=0), split.train, cfg.train, seed=0)
print(torch.get_num_threads(), malloc_state())
result = run(cfg, OUT)
print(torch.get_num_threads(), malloc_state(), (result.run_dir / "environment.json").read_text().count('"threads": 3'))
"""


def test_the_library_leaves_the_process_alone(tmp_path) -> None:
    code = NOTEBOOK.replace("OUT", repr(str(tmp_path)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "untuned", "3", "untuned", "1"], (
        "fit and run keep the notebook's threads and malloc, and record them"
    )


def test_a_sweep_workers_share_of_the_cores_is_the_thread_count_of_its_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERTURBD_THREADS", "1")
    assert effective_threads(None) == 1 and effective_threads(3) == 3, "a run's own train.threads wins"
    monkeypatch.delenv("PERTURBD_THREADS")
    assert effective_threads(None) >= 1


def test_an_entry_point_sets_threads_and_malloc() -> None:
    before = torch.get_num_threads()
    try:
        assert tune_process(2) == 2 and torch.get_num_threads() == 2
        assert malloc_state() != "untuned"
    finally:
        torch.set_num_threads(before)


def test_only_commands_that_train_or_defend_read_the_malloc_setting(tmp_path) -> None:
    """A bad PERTURBD_MALLOC is one line and exit 2 where it is used, and no obstacle to listing."""
    env = {**os.environ, "PERTURBD_MALLOC": "bogus"}
    listing = subprocess.run([sys.executable, "-m", "perturbd", "defenses"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    cmd = [sys.executable, "-m", "perturbd", "run", "--set", "data.name=synthetic", "--set", "train.epochs=1", "-o", str(tmp_path / "r")]
    training = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert training.returncode == 2 and "PERTURBD_MALLOC='bogus'" in training.stderr + training.stdout
    assert not (tmp_path / "r").exists()
