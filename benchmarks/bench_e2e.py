"""Whole experiments, end to end: wall time and peak memory of ``perturbd run``.

Each experiment runs as a fresh ``python -m perturbd run … --force`` child process (imports,
data loading from the warm cache, trigger, poisoning, clean twin and backdoored training,
evaluation, run directory), timed with ``time.perf_counter`` around the child. Its peak resident
memory is the child's ``ru_maxrss`` from ``os.wait4`` (Linux: KiB; reported in MiB). The data
cache is filled once before any timing (decoding JPEGs is a one-off cost, not part of a run).

Experiments (each only when its data is there):

- ``demo``: the README demo, ``perturbd run`` with every default (mnist5k, grid c = 10, 5 %).
- ``mnist``: full MNIST (60,000 + 10,000), grid c = 10, 1 % poison, ``--mnist-epochs`` epochs
  (needs ``--data-root`` holding ``MNIST/raw``). Targets (10 epochs, the default): < 90 s on 2
  idle cores, peak < 2 GiB, stages other than training < 10 % of the wall time.
- ``cifar10``: CIFAR-10 (JPEG), grid c = 10, 1 % poison (needs ``--data-root`` holding
  ``cifar10-jpeg``; ``--cifar``). fastnet32 with its recipe on a GPU, fastnet32_small with its
  CPU recipe on a CPU (``--cifar-epochs`` overrides either's epoch count). Targets: peak < 4 GiB
  and clean accuracy ≥ 85 %; on 2 CPU cores < 30 min, on one H100 < 60 s.

    python -m benchmarks.bench_e2e --data-root DIR --repeat 3
    python -m benchmarks.bench_e2e --data-root DIR --only mnist --set train.precision=bf16 --tag bf16
    python -m benchmarks.bench_e2e --data-root DIR --cifar --only cifar10 --repeat 1
    python -m benchmarks.bench_e2e --data-root DIR --cifar --only cifar10 --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import Series, load_split, machine, parser, pick_device, print_table, write_result
from perturbd.models.fastnet import CPU_RECIPE, RECIPE
from perturbd.runs.folder import RunDir

NAME = "bench_e2e"
TARGETS = {
    "mnist": {"seconds": 90.0, "peak_mib": 2048.0},
    "cifar10": {"seconds": 1800.0, "peak_mib": 4096.0, "clean_accuracy": 0.85},
    "cifar10_gpu": {"seconds": 60.0, "peak_mib": 4096.0, "clean_accuracy": 0.85},
}


def experiments(args: argparse.Namespace, device: torch.device) -> dict[str, list[str]]:
    """``--set`` overrides of each experiment that can run with the given options."""
    dev = [f"train.device={device}"]
    out: dict[str, list[str]] = {"demo": [*dev]}
    if args.quick:
        out["demo"] += ["data.train_limit=500", "data.test_limit=200", "train.epochs=1"]
    if args.data_root is not None and (args.data_root / "MNIST" / "raw").is_dir():
        mnist = ["data.name=mnist", f"data.root={args.data_root}", "trigger.kind=grid", "trigger.amplitude=10", "poison.rate=0.01"]
        out["mnist"] = [*mnist, f"train.epochs={args.mnist_epochs}", *dev]
    if args.cifar and args.data_root is not None and (args.data_root / "cifar10-jpeg").is_dir():
        cifar = [
            f"data.name=imagefolder:{args.data_root / 'cifar10-jpeg'}",
            "trigger.kind=grid",
            "trigger.amplitude=10",
            "poison.rate=0.01",
        ]
        model, recipe = ("fastnet32", RECIPE) if device.type == "cuda" else ("fastnet32_small", CPU_RECIPE)
        if args.cifar_epochs is not None:
            recipe = {**recipe, "epochs": args.cifar_epochs}
        cifar += [f"model.name={model}", *(f"train.{k}={v}" for k, v in recipe.items())]
        out["cifar10"] = [*cifar, *dev]
    return {k: [*v, *args.sets] for k, v in out.items() if k in args.only}


def warm_cache(name: str, args: argparse.Namespace) -> None:
    """Decode the data once (cached by perturbd), so the timed runs all start from the cache."""
    if name == "mnist":
        load_split("mnist", args.data_root, None, None, 0)
    elif name == "cifar10":
        load_split("cifar10-jpeg", args.data_root, None, None, 0)


def run_child(overrides: list[str], out: Path, log: Path) -> tuple[float, float, int]:
    """``(wall seconds, peak RSS MiB, exit code)`` of one ``perturbd run`` child process."""
    cmd = [sys.executable, "-m", "perturbd", "run", "--out", str(out), "--force"]
    for item in overrides:
        cmd += ["--set", item]
    with log.open("w") as sink:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    return seconds, usage.ru_maxrss / 1024.0, child.returncode


def run_metrics(out: Path) -> dict[str, Any]:
    """Accuracy, ASR and per-stage seconds of the (single) run directory under ``out``."""
    found = [run for run in map(RunDir, sorted(out.iterdir())) if run.is_run()]
    if not found:
        return {}
    m = found[0].metrics()
    return {
        "clean_accuracy": m.clean_accuracy,
        "clean_twin_accuracy": m.clean_twin_accuracy,
        "attack_success_rate": m.attack_success_rate,
        "clean_model_asr": m.clean_model_asr,
        "injection_rate": m.injection_rate,
        "timing": found[0].timing(),
    }


def not_training(wall: float, extra: dict[str, Any]) -> float:
    """Share of a run's wall time (process start to exit: imports, data, trigger, evaluation,
    writing) spent outside the two trainings that ``timing.json`` times."""
    timing = extra.get("timing", {})
    return (wall - timing.get("train_clean", 0.0) - timing.get("train_backdoored", 0.0)) / wall


def outside_training(wall: float, extra: dict[str, Any]) -> dict[str, float]:
    """Seconds of a run spent outside its two trainings, by stage: ``startup`` is the child's
    wall time that ``timing.json``'s total does not cover (interpreter, imports, config, process
    exit), the others are ``timing.json``'s own stages."""
    timing = extra.get("timing", {})
    if "total" not in timing:
        return {}
    trainings = {"train_clean", "train_backdoored", "total"}
    return {"startup": wall - timing["total"], **{k: v for k, v in timing.items() if k not in trainings}}


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="folder holding MNIST/raw and cifar10-jpeg")
    p.add_argument("--mnist-epochs", type=int, default=10, help="training epochs of the full-MNIST experiment")
    p.add_argument("--cifar", action="store_true", help="also run the CIFAR-10 (JPEG) experiment")
    p.add_argument("--cifar-epochs", type=int, default=None, help="epochs of the CIFAR-10 experiment (default: its recipe's)")
    p.add_argument("--only", nargs="+", choices=["demo", "mnist", "cifar10"], default=["demo", "mnist", "cifar10"])
    p.add_argument("--keep", type=Path, default=None, help="keep run directories and logs here (default: a temporary folder)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], help="section.key=value for every experiment (e.g. train.precision=bf16)"
    )
    p.add_argument("--tag", default=None, help="added to the result file's name (a variant made with --set)")
    args = p.parse_args(argv)
    args.data_root = args.data_root.expanduser() if args.data_root else None
    if args.quick:
        args.only, args.repeat = ["demo"], 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device(args.device)
    todo = experiments(args, device)
    series = {name: Series(name, "s") for name in todo}
    peaks = {name: Series(name, "MiB") for name in todo}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="perturbd-e2e-") as tmp:
        base = args.keep or Path(tmp)
        for name in todo:
            warm_cache(name, args)
        for r in range(args.repeat):
            for name, overrides in todo.items():
                out = base / f"{name}-{r}"
                out.mkdir(parents=True, exist_ok=True)
                seconds, peak, code = run_child(overrides, out, out / "stdout.log")
                if code != 0:
                    failures[name] = f"exit {code}; see {out / 'stdout.log'}" + ("" if args.keep else " (deleted: rerun with --keep)")
                    print((out / "stdout.log").read_text()[-2000:], file=sys.stderr)
                    continue
                series[name].values.append(seconds)
                peaks[name].values.append(peak)
                series[name].extra = {"overrides": overrides, **run_metrics(out)}
    kind = "_gpu" if device.type == "cuda" else ""
    met: dict[str, bool] = {}
    for name, s in series.items():
        target = TARGETS.get(name + kind if name == "cifar10" else name, {})
        if s.values and target:
            accurate = s.extra.get("clean_accuracy", 0.0) >= target.get("clean_accuracy", 0.0)
            met[name] = s.mean < target.get("seconds", float("inf")) and max(peaks[name].values) < target["peak_mib"] and accurate
    print_table(
        f"{NAME}: perturbd run, {device}",
        ["experiment", "wall s (mean ± std)", "peak RSS MiB (max)", "not training %", "clean acc", "ASR"],
        [
            [
                n,
                s.cell(1),
                f"{max(peaks[n].values):,.0f}",
                f"{100 * not_training(s.values[-1], s.extra):.1f}",
                f"{s.extra.get('clean_accuracy', float('nan')):.4f}",
                f"{s.extra.get('attack_success_rate', float('nan')):.4f}",
            ]
            for n, s in series.items()
            if s.values
        ],
    )
    for name, s in series.items():
        if s.values and (parts := outside_training(s.values[-1], s.extra)):
            print(f"{name}, outside training (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    for name, why in failures.items():
        print(f"FAILED {name}: {why}")
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "wall_seconds": {k: s.as_json() for k, s in series.items()},
        "peak_rss_mib": {k: s.as_json() for k, s in peaks.items()},
        "not_training_share": {k: not_training(s.values[-1], s.extra) for k, s in series.items() if s.values},
        "outside_training_seconds": {k: outside_training(s.values[-1], s.extra) for k, s in series.items() if s.values},
        "targets": TARGETS,
        "met": met,
        "failures": failures,
    }
    name = "-".join([NAME, *todo, device.type, *([args.tag] if args.tag else [])])  # one file per combination
    print(f"wrote {write_result(args.out, name, payload)}")
    return payload


if __name__ == "__main__":
    main()
