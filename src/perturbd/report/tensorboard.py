"""TensorBoard logs of training (``perturbd run --tensorboard DIR``; ``pip install 'perturbd[tensorboard]'``).

:class:`TensorBoardMonitor` is a training :class:`~perturbd.train.Monitor` that wraps another
(the progress bar) and writes, per epoch of every model trained, the mean training loss
(``train/loss``) and the throughput (``train/images_per_s``) to ``DIR/<run>/<model>/``: one
TensorBoard run per model, e.g. ``runs-tb/mnist5k-grid-d9ea7433/backdoored``
(``tensorboard --logdir DIR``).

The attack success rate per epoch is not logged: a monitor is told the epoch's loss and speed,
not the model being trained, and the trigger and test set live in the experiment, not in the
training loop; measuring it would change :func:`perturbd.train.fit` and the Monitor protocol
for one optional writer.

``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) is imported only when a
monitor is built; a missing package is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perturbd.errors import ConfigError
from perturbd.train import Monitor, SilentMonitor

HOW = "pip install 'perturbd[tensorboard]' (or pip install tensorboard)"


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; a :class:`ConfigError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed: {HOW}") from None
    return SummaryWriter


class TensorBoardMonitor:
    """Write each training's loss and images/s per epoch to TensorBoard; pass every call on to ``inner``.

    Args:
        logdir: the TensorBoard log folder (``tensorboard --logdir``).
        inner: the monitor to wrap (e.g. the rich progress bar); default: none.
        run: the sub-folder of the run being trained (a sweep sets it before each run).
    """

    def __init__(self, logdir: Path, inner: Monitor | None = None, run: str = "") -> None:
        self.writer_class = summary_writer_class()
        self.logdir = Path(logdir).expanduser()
        self.inner = inner or SilentMonitor()
        self.run = run
        self.writer: Any = None
        self.stages: list[str] = []
        self.seen: dict[tuple[str, str], int] = {}

    def folder(self, description: str) -> Path:
        """``logdir/run/description`` (spaces as ``_``); ``-2``, ``-3``… for a model trained again in one run."""
        name = "_".join(description.split()) or "train"
        count = self.seen[(self.run, name)] = self.seen.get((self.run, name), 0) + 1
        return self.logdir / self.run / (name if count == 1 else f"{name}-{count}")

    def start(self, description: str, total_steps: int) -> None:
        """A stage starts; its writer opens at its first epoch (a stage that is not a training
        (a defence, a sweep) writes nothing)."""
        self.close()
        self.stages.append(description)
        self.inner.start(description, total_steps)

    def step(self, images: int) -> None:
        self.inner.step(images)

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        if self.writer is None and self.stages:
            self.writer = self.writer_class(log_dir=str(self.folder(self.stages[-1])))
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, epoch)
            self.writer.add_scalar("train/images_per_s", images_per_s, epoch)
            self.writer.flush()
        self.inner.epoch(epoch, loss, images_per_s)

    def stop(self) -> None:
        self.close()
        if self.stages:
            self.stages.pop()
        self.inner.stop()

    def close(self) -> None:
        """Close the current writer (also after a training that failed)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TensorBoardMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
