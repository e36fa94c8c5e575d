"""Behaviour pinned: three small mnist5k experiments give ``metrics.json`` files byte for byte as
recorded in ``pinned_metrics.json`` (a static grid; an adaptive mask under knowledge ``none``; the
update setting from a checkpoint).

A refactoring must leave these digests unchanged. ``PERTURBD_PIN_UPDATE=1 pytest
tests/test_pinned_metrics.py`` records this platform's digests and keeps the others'; a change
that is *meant* to move the numbers deletes the file first (the other platforms' pins are stale
then), re-records, and says why in its commit. Float results depend on the CPU and on torch's version, so the digests are kept per
platform (torch's version and :func:`~perturbd.provenance.cpu_name`: the CPU's model and the instruction
sets that pick its kernels) and compared on the platforms that recorded them; elsewhere the test
skips. Two 2-core machines, both "AVX512" to torch, agreed on ``grid`` and differed on the other two.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from perturbd.config import TrainConfig, load_config
from perturbd.data import load_data
from perturbd.models import get_model, save_model
from perturbd.process import tune_process
from perturbd.provenance import cpu_name
from perturbd.runs.experiment import run
from perturbd.train import fit

PINS = Path(__file__).with_name("pinned_metrics.json")
BASE = ["data.train_limit=1000", "data.test_limit=300", "train.epochs=2", "train.batch_size=64", "train.device=cpu", "train.threads=1"]
CONFIGS = {
    "grid": ["trigger.kind=grid", "trigger.amplitude=10", "poison.rate=0.05"],
    "adaptive-none": ["trigger.kind=adaptive", "trigger.budget=24", "trigger.samples=100", "trigger.passes=2", "trigger.max_steps=4",
                      "attack.knowledge=none", "attack.surrogate_steps=40", "poison.rate=0.05", "poison.target=3"],
    "update-checkpoint": ["trigger.kind=chessboard", "trigger.amplitude=16", "attack.setting=update", "attack.update_size=300",
                          "attack.update_epochs=1", "attack.checkpoint=pre.safetensors", "poison.rate=0.1"],
}  # fmt: skip


def platform() -> str:
    return f"torch {torch.__version__.split('+')[0]}, {cpu_name()}"


def write_checkpoint(path: Path) -> None:
    """The pre-update model of ``update-checkpoint``: cnn28 trained 1 epoch on the same 1,000 images, seed 1."""
    split = load_data(load_config(overrides=BASE).data, seed=0)
    torch.manual_seed(1)
    model = get_model("cnn28", split.train.image_shape, split.train.num_classes)
    fit(model, split.train, TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1), seed=1)
    save_model(model, path, {"note": "pinned pre-update model"})


def digests(folder: Path) -> dict[str, str]:
    tune_process(1)  # as `perturbd run` does for train.threads=1: the library never sets threads
    write_checkpoint(folder / "pre.safetensors")
    out = {}
    for name, sets in CONFIGS.items():
        result = run(load_config(overrides=[*BASE, *sets]), folder / "runs")
        out[name] = hashlib.sha256((result.run_dir / "metrics.json").read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_metrics_json_is_byte_identical_to_the_pinned_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the checkpoint path in the config (and so in metrics.json) is relative
    pins = json.loads(PINS.read_text()).get("digests_by_platform", {}) if PINS.is_file() else {}
    if os.environ.get("PERTURBD_PIN_UPDATE") == "1":  # this platform's digests, the others' kept
        pins[platform()] = digests(Path("."))
        PINS.write_text(json.dumps({"digests_by_platform": pins}, indent=2) + "\n")
        pytest.skip(f"re-recorded {PINS.name} for {platform()}")
    if platform() not in pins:
        pytest.skip(f"digests were recorded on {', '.join(pins) or 'no platform'}; this is {platform()}")
    assert digests(Path(".")) == pins[platform()]
