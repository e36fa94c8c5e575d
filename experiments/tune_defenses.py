"""Choose the tuned settings of the two dataset screens on seeds that are not scored.

The matrix (``defense_matrix.yaml``) and the equal-visibility study run every defence at its
paper's defaults and, beside them under their own labels, tuned variants: spectral signatures on
k singular vectors (``spectral_signature_k<k>``; the paper: k = 1) and activation clustering with
another reduction (``activation_clustering_<reduction>``; the paper: ica). A value chosen on the
runs it is then scored on flatters it; this script chooses on tuning seeds (default 10 11) and
refuses seeds that are scored (default 0 1 2).

For each row of the matrix (:data:`defense_matrix.ROWS`) and each tuning seed it runs the
matrix's experiment with the candidates as labelled defences (:data:`CANDIDATES`: k = 1…8, ica
and pca), and writes ``OUT/tune_defenses.json``: per defence and candidate, the AUROC of every
run and their mean, and the candidate of the highest mean (ties: the first listed, the paper's
where it is a candidate). Its choice goes into ``defense_matrix.yaml`` as the tuned variants.
Finished runs are reused, as the matrix's are; the clean twins are shared in ``OUT/twins``.

    python experiments/tune_defenses.py --out runs/tune --set data.root=DIR
    python experiments/tune_defenses.py --out /tmp/tune --rows grid --set data.name=mnist5k --set train.epochs=1  # a smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

from perturbd.config import DefenseSpec, apply_overrides, read_yaml, validate
from perturbd.errors import exit_code
from perturbd.process import tune_process
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import write_json

HERE = Path(__file__).resolve().parent
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "spectral_signature": {f"k{k}": {"components": k} for k in range(1, 9)},
    "activation_clustering": {"ica": {"reduction": "ica"}, "pca": {"reduction": "pca"}},
}
"""Per defence, each candidate's tag (its label is ``<defence>_<tag>``) and parameters."""


def matrix_rows() -> dict[str, list[str]]:
    """The matrix's rows (``defense_matrix.py``'s ``ROWS``: the overrides of each attack)."""
    spec = importlib.util.spec_from_file_location("defense_matrix", HERE / "defense_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows: dict[str, list[str]] = module.ROWS
    return rows


def candidate_specs() -> list[DefenseSpec]:
    """Every candidate as a labelled defence."""
    return [DefenseSpec(name=d, label=f"{d}_{tag}", params=p) for d, tags in CANDIDATES.items() for tag, p in tags.items()]


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "defense_matrix.yaml", help="the experiment (its defences are replaced)")
    parser.add_argument("--out", type=Path, default=Path("runs/tune"))
    parser.add_argument("--rows", nargs="+", default=None, help="rows of the matrix (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[10, 11], help="tuning seeds")
    parser.add_argument("--scored-seeds", nargs="+", type=int, default=[0, 1, 2], help="the seeds the matrix scores: never tuned on")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value (every run)")
    return parser.parse_args(argv)


def choose(aurocs: dict[str, dict[str, list[float | None]]]) -> dict[str, Any]:
    """Per defence: each candidate's AUROCs and mean, and the candidate of the highest mean."""
    out: dict[str, Any] = {}
    for defence, tags in CANDIDATES.items():
        table = {}
        for tag, params in tags.items():
            values = aurocs[defence][tag]
            known = [v for v in values if v is not None]
            table[tag] = {"params": params, "auroc": values, "mean": statistics.fmean(known) if known else None}
        best = max(table, key=lambda t: -1.0 if table[t]["mean"] is None else table[t]["mean"])
        out[defence] = {"chosen": best, "label": f"{defence}_{best}", "params": tags[best], "candidates": table}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    overlap = sorted(set(args.seeds) & set(args.scored_seeds))
    if overlap:
        raise SystemExit(f"tuning seeds {overlap} are scored seeds too; tune on others (e.g. --seeds 10 11)")
    all_rows = matrix_rows()
    rows = args.rows or list(all_rows)
    unknown = [r for r in rows if r not in all_rows]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; the matrix has {', '.join(all_rows)}")
    base = read_yaml(args.config) | {"defenses": [s.model_dump() for s in candidate_specs()]}
    aurocs: dict[str, dict[str, list[float | None]]] = {d: {t: [] for t in tags} for d, tags in CANDIDATES.items()}
    runs = []
    for seed in args.seeds:
        for row in rows:
            # the matrix's overrides, renamed: these runs are not the matrix's
            sets = [s if not s.startswith("name=") else f"name=tune-{row}" for s in all_rows[row]]
            cfg = validate(apply_overrides(base, [*sets, *args.sets, f"seed={seed}"]))
            tune_process(cfg.train.threads)
            result = run(cfg, args.out, log=lambda m, r=row, s=seed: print(f"[{r} {s}] {m}", flush=True), twin_cache=args.out / "twins")
            reports = {r["name"]: r["metrics"] for r in RunDir(result.run_dir).defenses()["defenses"]}
            for defence, tags in CANDIDATES.items():
                for tag in tags:
                    aurocs[defence][tag].append(reports[f"{defence}_{tag}"].get("auroc"))
            runs.append({"row": row, "seed": seed, "run": result.run_dir.name})
    record = {"tuning_seeds": args.seeds, "scored_seeds": args.scored_seeds, "rows": rows, "runs": runs, "defenses": choose(aurocs)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "tune_defenses.json", record)
    for defence, result in record["defenses"].items():
        means = ", ".join(f"{t} {'–' if c['mean'] is None else format(c['mean'], '.3f')}" for t, c in result["candidates"].items())
        print(f"{defence}: {result['label']} (mean AUROC: {means})")
    print(f"wrote {args.out / 'tune_defenses.json'}")
    return record


def cli(argv: list[str] | None = None) -> int:
    """:func:`main`, with a user's mistake as one line and exit code 2."""
    return exit_code(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
