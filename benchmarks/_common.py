"""What every benchmark shares: the command line, timing, statistics, the machine, the JSON file.

Timing: wall seconds from ``time.perf_counter``; on a CUDA device, between two CUDA events
recorded around the work, after ``torch.cuda.synchronize`` on both sides, so queued GPU work is
counted. Repeats are interleaved (A B C, A B C, …) so a change of machine load hits every
contestant alike; each figure is reported as mean ± sample standard deviation over the repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from perturbd.config import DataConfig
from perturbd.data import DataSplit, load_data
from perturbd.process import cores, tune_process
from perturbd.runs.experiment import environment

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--repeat``, ``--quick``, ``--device``, ``--out``, ``--seed``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each contestant (interleaved)")
    p.add_argument("--quick", action="store_true", help="small sizes and one repeat: a smoke test in < 30 s")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for <benchmark>.json")
    p.add_argument("--seed", type=int, default=0)
    return p


def pick_device(name: str, threads: int | None = None) -> torch.device:
    """The device ``--device`` names. A benchmark is an entry point: this also sets the process as
    ``perturbd run`` does (:func:`perturbd.process.tune_process`: glibc's malloc,
    ``PERTURBD_MALLOC=system`` for its defaults, and ``threads`` CPU threads, default all usable
    cores), so a benchmark measures what a run does; the result file's ``machine`` says which held."""
    tune_process(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """``(seconds, fn())``: wall seconds of ``fn``; on CUDA measured with events after a synchronize."""
    if device.type != "cuda":
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    out = fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / 1000.0, out


@dataclass
class Series:
    """Repeated measurements of one contestant, in ``unit``."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def cell(self, digits: int = 1) -> str:
        return f"{self.mean:,.{digits}f} ± {self.std:,.{digits}f}"

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "mean": self.mean, "std": self.std, "n": len(self.values), "values": self.values, **self.extra}


def seconds_per_image(model: torch.nn.Module, image_shape: Sequence[int], batch: int, device: torch.device, images: int = 512) -> float:
    """Wall seconds per image of one forward and one input-gradient backward of ``model`` at ``batch``.

    The unit of work of DeepFool and Neural Cleanse. ``seconds_per_image(small) /
    seconds_per_image(large)`` bounds what running ``large`` images at once instead of ``small``
    can gain for equal work on this machine: batching removes per-call overhead, not arithmetic.
    The median of five timed blocks of about ``images`` images each, after one warm-up block.
    """
    model.eval()
    x = torch.rand(batch, *image_shape, device=device)
    calls = max(1, images // batch)

    def block() -> None:
        for _ in range(calls):
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(model(xr)[:, 0].sum(), xr)

    block()
    return statistics.median(timed(block, device)[0] for _ in range(5)) / (calls * batch)


def batching_ceiling(
    model: torch.nn.Module, image_shape: Sequence[int], small: int, large: int, device: torch.device, images: int = 512
) -> dict[str, float]:
    """Per-image seconds at batch ``small`` and ``large`` and their ratio (see :func:`seconds_per_image`)."""
    a, b = (seconds_per_image(model, image_shape, n, device, images) for n in (small, large))
    return {"batch_small": small, "batch_large": large, "seconds_per_image_small": a, "seconds_per_image_large": b, "ceiling": a / b}


def machine(device: torch.device) -> dict[str, Any]:
    """Versions, device, CPU, date and load: the header of every result file."""
    info = environment(str(device))
    info.update(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cpu_count=os.cpu_count(),
        cpu_cores_usable=cores(),
        load_average_1_5_15=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cores()} cores)",
    )
    return info


def write_result(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out/<name>.json`` and return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain, aligned text table on stdout."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def load_split(name: str, data_root: Path | None, train_limit: int | None, test_limit: int | None, seed: int) -> DataSplit:
    """``mnist5k`` (embedded), ``mnist`` (``data_root/MNIST/raw``) or ``cifar10-jpeg``
    (``data_root/cifar10-jpeg/{train,test}``), through perturbd's loader and cache."""
    data_root = data_root.expanduser() if data_root is not None else None
    if name == "mnist5k":
        cfg = DataConfig(name="mnist5k", train_limit=train_limit, test_limit=test_limit)
    elif data_root is None:
        raise SystemExit(f"--data {name} needs --data-root (the folder holding MNIST/raw and cifar10-jpeg)")
    elif name == "mnist":
        cfg = DataConfig(name="mnist", root=data_root, train_limit=train_limit, test_limit=test_limit)
    elif name == "cifar10-jpeg":
        cfg = DataConfig(name=f"imagefolder:{data_root / 'cifar10-jpeg'}", train_limit=train_limit, test_limit=test_limit)
    else:
        raise SystemExit(f"--data must be mnist5k, mnist or cifar10-jpeg, got {name!r}")
    return load_data(cfg, seed)


def speedup(slow: Series, fast: Series) -> float:
    """How many times faster ``fast`` is than ``slow`` (ratio of mean seconds)."""
    return slow.mean / fast.mean if fast.mean > 0 else math.nan
