"""TensorBoard logs of training: loss and images/s per epoch and model, the wrapped monitor still told everything."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import SYNTHETIC

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.models import get_model
from perturbd.train import fit

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from perturbd.report.tensorboard import TensorBoardMonitor


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, description: str, total_steps: int) -> None:
        self.calls.append(("start", description, total_steps))

    def step(self, images: int) -> None:
        self.calls.append(("step", images))

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        self.calls.append(("epoch", epoch, loss))

    def stop(self) -> None:
        self.calls.append(("stop",))


def scalars(folder, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_fit_logs_loss_and_speed_per_epoch_and_passes_calls_on(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, generator=gen), torch.arange(128) % 2, ("a", "b"))
    inner = Recorder()
    monitor = TensorBoardMonitor(tmp_path / "tb", inner, run="run-1")
    result = fit(
        get_model("auto", (1, 28, 28), 2, seed=0),
        data,
        TrainConfig(epochs=3, batch_size=32, device="cpu"),
        0,
        monitor=monitor,
        description="clean twin",
    )
    folder = tmp_path / "tb" / "run-1" / "clean_twin"
    assert [(s, pytest.approx(v)) for s, v in scalars(folder, "train/loss")] == list(zip([1, 2, 3], result.losses))
    assert [s for s, v in scalars(folder, "train/images_per_s") if v > 0] == [1, 2, 3]
    assert inner.calls[0] == ("start", "clean twin", 12) and inner.calls[-1] == ("stop",)
    assert [c[1] for c in inner.calls if c[0] == "epoch"] == [1, 2, 3] and sum(1 for c in inner.calls if c[0] == "step") == 12
    assert monitor.writer is None, "closed when training stops"
    assert monitor.folder("clean twin").name == "clean_twin-2", "a model trained again in one run gets its own folder"


def test_missing_tensorboard_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'perturbd\[tensorboard\]'"):
        TensorBoardMonitor(tmp_path)


def test_cli_run_writes_one_log_per_model(cli, tmp_path) -> None:
    sets = [*SYNTHETIC, "data.train_limit=300", "data.test_limit=100"]
    code, _, err = cli(
        "run", *(a for s in sets for a in ("--set", s)), "--out", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")
    )
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in (tmp_path / "tb" / run.name).iterdir()} == {"clean_twin", "backdoored"}
    assert scalars(tmp_path / "tb" / run.name / "backdoored", "train/loss")[0][0] == 1


def test_nothing_of_tensorboard_is_imported_when_off() -> None:
    code = (
        "import sys, perturbd.cli, perturbd.runs.experiment, perturbd.sweep.runner; "
        "print('torch.utils.tensorboard' in sys.modules, 'tensorboard' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]


def test_cli_sweep_logs_each_run_in_its_folder_in_process_only(cli, tmp_path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "base: {data: {name: synthetic, train_limit: 300, test_limit: 100}, train: {epochs: 1, batch_size: 64, device: cpu}}\n"
        f"axes: {{poison.rate: [0.05, 0.1]}}\nworkers: 4\nout: {tmp_path / 'runs'}\n"
    )
    code, _, err = cli("sweep", str(spec), "--tensorboard", str(tmp_path / "tb"), "--workers", "2")
    assert code == 2 and "--workers 1" in err and not (tmp_path / "runs").exists()
    code, _, err = cli("sweep", str(spec), "--tensorboard", str(tmp_path / "tb"))
    assert code == 0, err
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("s-"))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs and len(runs) == 2
    assert all((tmp_path / "tb" / r / "backdoored").is_dir() for r in runs)
