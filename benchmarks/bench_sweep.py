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
clean accuracy.

    python -m benchmarks.bench_sweep --data-root DIR            # full MNIST, 8 runs
    python -m benchmarks.bench_sweep --quick                    # mnist5k, 4 runs, a smoke test
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import Series, cpu_cores, machine, parser, pick_device, print_table, speedup, timed, write_result
from perturbd.report.aggregate import collect_runs
from perturbd.sweep import load_sweep, run_sweep

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


def options(argv: Sequence[str] | None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=None, help="folder holding MNIST/raw (full MNIST)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rates", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--workers", type=int, default=max(2, cpu_cores()), help="workers of the parallel contestant")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seeds, args.epochs, args.repeat = [0.1], [0, 1], 1, 1
    elif args.data_root is None:
        p.error("--data-root is needed for full MNIST (or --quick for mnist5k)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    device = pick_device("cpu")
    contestants = {"sequential": 1, "parallel": args.workers}
    series = {name: Series(name, "s") for name in contestants}
    metrics: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for name, workers in contestants.items():
            folder = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))
            try:
                sweep = load_sweep(sweep_file(folder, args, workers))
                seconds, result = timed(lambda: run_sweep(sweep), device)
                if result.failed:
                    raise RuntimeError(f"{name}: {len(result.failed)} runs failed: {result.failed[0]['error']}")
                series[name].values.append(seconds)
                metrics[name] = {(r.config["poison"]["rate"], r.config["seed"]): r.metrics for r in collect_runs(sweep.out)}
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    ratio = speedup(series["sequential"], series["parallel"])
    keys = metrics["sequential"].keys()
    diff = {m: max(abs(metrics["sequential"][k][m] - metrics["parallel"][k][m]) for k in keys) for m in ("attack_success_rate", "clean_accuracy")}
    runs = len(args.rates) * len(args.seeds)
    print_table(
        f"{NAME}: {runs} runs ({'mnist5k' if args.quick else 'full MNIST'}, grid c = 10, {args.epochs} epochs), {cpu_cores()} cores",
        ["contestant", "workers × threads", "seconds (mean ± std)", "sequential / this"],
        [[n, f"{w} × {max(1, cpu_cores() // w)}", series[n].cell(1), f"{speedup(series['sequential'], series[n]):.2f}×"] for n, w in contestants.items()],
    )
    print(f"largest difference, sequential vs parallel: ASR {diff['attack_success_rate']:.4f}, clean accuracy {diff['clean_accuracy']:.4f}")
    payload = {
        "benchmark": NAME,
        "machine": machine(device),
        "args": vars(args),
        "series": {k: s.as_json() for k, s in series.items()},
        "speedup": ratio,
        "largest_metric_difference": diff,
        "target_speedup": TARGET_SPEEDUP,
        "met": ratio >= TARGET_SPEEDUP,
    }
    print(f"wrote {write_result(args.out, NAME, payload)}")
    return payload


if __name__ == "__main__":
    main()
