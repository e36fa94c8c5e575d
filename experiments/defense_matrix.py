"""The attack × defence matrix from one command.

Runs the experiment of ``defense_matrix.yaml`` once per row and seed (the paper's static grid
c = 10, its adaptive mask (L∞ ≤ 10, the paper's algorithm, knowledge full), and the BadNets-style
3×3 white patch as the sanity row), each with every defence, then writes the combined
``matrix.md`` / ``matrix.csv`` into ``--out``. The rows of one seed differ only in the trigger, so
they share one clean twin (``--twin-cache``). Finished runs are reused (run directories are
complete or absent), so an interrupted matrix loses nothing.

    python experiments/defense_matrix.py --out runs/matrix --seeds 0 1 2 [--set train.threads=1 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from perturbd.config import apply_overrides, read_yaml, validate
from perturbd.process import tune_process
from perturbd.report.matrix import matrix_rows, write_matrix
from perturbd.runs.experiment import run

HERE = Path(__file__).resolve().parent
ROWS = {
    "grid": ["trigger.kind=grid", "trigger.amplitude=10", "name=matrix-grid"],
    "adaptive": ["trigger.kind=adaptive", "trigger.norm=linf", "trigger.budget=10", "name=matrix-adaptive"],
    "patch": ["trigger.kind=patch", "trigger.amplitude=255", "trigger.size=3", "name=matrix-patch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "defense_matrix.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/matrix"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value (every row)")
    parser.add_argument("--twin-cache", type=Path, default=None, help="share the clean twin between rows (default: <out>/twins)")
    args = parser.parse_args()
    base = read_yaml(args.config)
    dirs = []
    for seed in args.seeds:
        for row in args.rows:
            cfg = validate(apply_overrides(base, [*ROWS[row], *args.sets, f"seed={seed}"]))
            started = time.perf_counter()
            tune_process(cfg.train.threads)  # this script is the entry point, as `perturbd run` is
            twins = args.twin_cache or args.out / "twins"
            result = run(cfg, args.out, log=lambda m: print(f"[{row} {seed}] {m}", flush=True), twin_cache=twins)
            print(
                f"[{row} {seed}] {'reused' if result.skipped else 'done'} in {time.perf_counter() - started:.0f} s: {result.run_dir}",
                flush=True,
            )
            dirs.append(result.run_dir)
    md, csv_path = write_matrix(matrix_rows(dirs), args.out)
    print(md.read_text())
    print(f"wrote {md} and {csv_path}")


if __name__ == "__main__":
    main()
