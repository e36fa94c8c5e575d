"""A sweep on one machine: runs one after the other against several runs at once.

The same sweep (full MNIST by default: the static grid c = 10 at 4 injection rates × 2 seeds, 2
epochs: 8 runs, 2 clean twins) is run from scratch in a fresh folder with each contestant:

- ``sequential``: ``workers: 1``: one run at a time in this process, all cores to torch;
- ``parallel``: ``workers: N`` (default: the number of cores, at least 2): a process pool, each
  worker with ``cores // N`` torch threads (never more threads than cores in all). Workers that
  need the same clean twin take turns on its lock: the second loads what the first stored.

Reported: wall seconds of each (setup and data loading included) and sequential / parallel. The
metrics of the two are compared run by run (same config and seed): runs with a different thread
count may differ in the last float bits, so the JSON gives the largest difference of ASR and
clean accuracy. Where each contestant's seconds go, from every run's ``timing.json``: the runs'
own seconds added up (each from its start to its run directory written), the part of them spent
training (clean twin and backdoored model), and the *occupancy*: the runs' seconds over the
contestant's wall time × its workers (1.0 when every worker is always inside a run; the rest is
process start, imports, waits and an uneven last round).

Then the *ceiling* of that ratio for training, which is most of a run: the same training (the
sweep's model, one epoch of the full training set, :func:`perturbd.train.fit`) in fresh
processes, started together, first one alone with every core, then ``N`` at once with
``cores // N`` threads each. The images per second of the ``N`` together (all their images over
the seconds from the first start to the last end) over those of the one alone is what running
``N`` trainings side by side can gain over one after the other: below 1.3, the cores are
already busy inside one training, and what is left to gain is the time outside it.

    python -m benchmarks.bench_sweep --data-root DIR            # full MNIST, 8 runs
    python -m benchmarks.bench_sweep --quick                    # mnist5k, 4 runs, a smoke test
    python -m benchmarks.bench_sweep --data-root DIR --ceiling-only  # only the trainings' ceiling
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import Series, load_split, machine, parser, pick_device, print_table, speedup, timed, write_result
from perturbd.config import TrainConfig
from perturbd.models import default_model_name, get_model
from perturbd.process import cores, tune_process
from perturbd.report.aggregate import collect_runs
from perturbd.runs.folder import RunDir
from perturbd.sweep.runner import load_sweep, run_sweep
from perturbd.train import fit

NAME = "bench_sweep"
TARGET_SPEEDUP = 1.3


def sweep_file(folder: Path, args: Any, workers: int) -> Path:
    data = {"name": "mnist5k"} if args.quick else {"name": "mnist", "root": str(args.data_root)}
    if args.quick:
        data["train_limit"] = 500
    spec = {
        "name": f"bench-{workers}",
        "base": {"data": data, "trigger": {"kind": "grid", "amplitude": 10}, "train": {"epochs": args.epochs, "device": "cpu"}},
        "axes": {"poison.rate": args.rates},
        "seeds": args.seeds,
        "workers": workers,
        "out": str(folder / f"workers-{workers}"),
    }
    path = folder / f"sweep-{workers}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def breakdown(out: Path, wall: float, workers: int) -> dict[str, float]:
    """Where a contestant's ``wall`` seconds went, from the ``timing.json`` of every run under
    ``out``: the runs' own seconds in all, their training seconds, what is not training, and the
    occupancy (run seconds over wall × workers)."""
    timings = [r.run.timing() for r in collect_runs(out)]
    runs = sum(t["total"] for t in timings)
    training = sum(t.get("train_clean", 0.0) + t.get("train_backdoored", 0.0) for t in timings)
    return {
        "wall": wall,
        "workers": workers,
        "run_seconds": runs,
        "training": training,
        "outside_training": runs - training,
        "occupancy": runs / (wall * workers),
    }


def train_at_once(data: str, root: Path | None, limit: int | None, threads: int, seed: int, start: Any, out: Any) -> None:
    """One training in a fresh process (spawned): load the data, wait for the others at ``start``,
    train one epoch with ``threads`` threads, put ``(images, start, end)`` on ``out`` (wall clock)."""
    split = load_split(data, root, limit, 10, seed)
    model = get_model(default_model_name(split.train.image_shape), split.train.image_shape, split.train.num_classes, seed=seed)
    cfg = TrainConfig(epochs=1, device="cpu", threads=threads)
    tune_process(threads)  # a fresh process: an entry point
    start.wait()
    begin = time.time()
    fit(model, split.train, cfg, seed=seed)
    out.put((len(split.train) // cfg.batch_size * cfg.batch_size, begin, time.time()))


def trainings_at_once(args: Any, count: int) -> float:
    """Images per second of ``count`` trainings run at once, the cores split between them: all
    their images over the seconds from the first start to the last end."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(count), ctx.Queue()
    data, limit = ("mnist5k", 1000) if args.quick else ("mnist", None)
    threads = max(1, cores() // count)
    procs = [ctx.Process(target=train_at_once, args=(data, args.data_root, limit, threads, args.seed, start, out)) for _ in range(count)]
    for p in procs:
        p.start()
    done: list[tuple[int, float, float]] = []
    try:
        while len(done) < count:
            try:
                done.append(out.get(timeout=5))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a training process exited with code {failed[0]}") from None
    finally:
        for p in procs:
            if len(done) < count:
                p.terminate()
            p.join()
    return sum(n for n, _, _ in done) / (max(end for _, _, end in done) - min(begin for _, begin, _ in done))


def ceiling(args: Any) -> dict[str, Any]:
    """One training alone on every core against ``args.workers`` at once (:func:`trainings_at_once`),
    interleaved ``args.repeat`` times: the most parallel runs can gain on training."""
    alone, together = Series("alone", "img/s"), Series("together", "img/s")
    for _ in range(args.repeat):
        alone.values.append(trainings_at_once(args, 1))
        together.values.append(trainings_at_once(args, args.workers))
    ratio = together.mean / alone.mean
    print_table(
        f"training side by side: one epoch of {'mnist5k' if args.quick else 'full MNIST'}, {cores()} cores",
        ["trainings at once", "threads each", "img/s in all (mean ± std)", "over one alone"],
        [
            ["1", str(cores()), alone.cell(0), "1.00×"],
            [str(args.workers), str(max(1, cores() // args.workers)), together.cell(0), f"{ratio:.2f}×"],
        ],
    )
    return {"alone": alone.as_json(), "together": together.as_json(), "workers": args.workers, "ceiling": ratio}


def options(argv: Sequence[str] | None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="folder holding MNIST/raw (full MNIST)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--workers", type=int, default=max(2, cores()), help="workers of the parallel contestant")
    p.add_argument("--ceiling-only", action="store_true", help="measure only the trainings' ceiling, no sweep")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seeds, args.epochs, args.repeat = [0.1], [0, 1], 1, 1
    elif args.data_root is None:
        p.error("--data-root is needed for full MNIST (or --quick for mnist5k)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device("cpu")
    if args.ceiling_only:
        payload = {
            "benchmark": NAME,
            "machine": machine(device),
            "args": vars(args),
            "ceiling": ceiling(args),
            "target_speedup": TARGET_SPEEDUP,
        }
        print(f"wrote {write_result(args.out, f'{NAME}-ceiling', payload)}")
        return payload
    contestants = {"sequential": 1, "parallel": args.workers}
    series = {name: Series(name, "s") for name in contestants}
    metrics: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    spent: dict[str, list[dict[str, float]]] = {name: [] for name in contestants}
    for _ in range(args.repeat):
        for name, workers in contestants.items():
            folder = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))
            try:
                sweep = load_sweep(sweep_file(folder, args, workers))
                seconds, result = timed(lambda: run_sweep(sweep), device)
                if result.failed:
                    raise RuntimeError(f"{name}: {len(result.failed)} runs failed: {result.failed[0]['error']}")
                series[name].values.append(seconds)
                metrics[name] = {(r.config["poison"]["rate"], r.config["seed"]): RunDir(r.path).metrics() for r in collect_runs(sweep.out)}
                spent[name].append(breakdown(sweep.out, seconds, workers))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    ratio = speedup(series["sequential"], series["parallel"])
    keys = metrics["sequential"].keys()
    diff = {
        m: max(abs(getattr(metrics["sequential"][k], m) - getattr(metrics["parallel"][k], m)) for k in keys)
        for m in ("attack_success_rate", "clean_accuracy")
    }
    runs = len(args.rates) * len(args.seeds)
    print_table(
        f"{NAME}: {runs} runs ({'mnist5k' if args.quick else 'full MNIST'}, grid c = 10, {args.epochs} epochs), {cores()} cores",
        ["contestant", "workers × threads", "seconds (mean ± std)", "sequential / this"],
        [
            [n, f"{w} × {max(1, cores() // w)}", series[n].cell(1), f"{speedup(series['sequential'], series[n]):.2f}×"]
            for n, w in contestants.items()
        ],
    )
    mean = {n: {k: sum(b[k] for b in spent[n]) / len(spent[n]) for k in spent[n][0]} for n in contestants}
    print_table(
        "where the seconds go (timing.json of every run; means over the repeats)",
        ["contestant", "wall s", "runs' seconds in all", "of which training", "outside training", "occupancy"],
        [
            [
                n,
                f"{m['wall']:.1f}",
                f"{m['run_seconds']:.1f}",
                f"{m['training']:.1f}",
                f"{m['outside_training']:.1f}",
                f"{m['occupancy']:.2f}",
            ]
            for n, m in mean.items()
        ],
    )
    print(f"largest difference, sequential vs parallel: ASR {diff['attack_success_rate']:.4f}, clean accuracy {diff['clean_accuracy']:.4f}")
    bound = ceiling(args)
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "series": {k: s.as_json() for k, s in series.items()},
        "speedup": ratio,
        "largest_metric_difference": diff,
        "breakdown": spent,
        "target_speedup": TARGET_SPEEDUP,
        "met": ratio >= TARGET_SPEEDUP,
        "ceiling": bound,
    }
    print(f"wrote {write_result(args.out, NAME, payload)}")
    return payload


if __name__ == "__main__":
    main()
