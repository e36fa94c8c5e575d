"""The removal matrix: every registered mitigation against every invisible trigger at equal visibility.

Rows: the paper's static grid and its adaptive mask (DeepFool L∞, knowledge full), Blended, SIG and
WaNet, each scaled to the same visibility (``--psnr``, mean PSNR of the poisoned images, 34.5 dB by
default) and poisoned at the rate where it is learned — the smallest rate with ASR ≥ 90 % in most
seeds, read from the equal-visibility table of the same data (``--rates-from``, made by
``experiments/equal_visibility.py``) — and the BadNets 3×3 white patch at its own strength and 1 %,
the visible control. Columns: every registered mitigation at its paper's defaults (``--param
NAME.KEY=VALUE`` changes one), and the training-time defences (ABL), which train their own victim
on the row's poisoned set from its initial weights. Each backdoored model (and the clean twin of
each seed, shared by the rows) is trained once, as a ``perturbd sweep`` trains, into ``OUT/runs``;
every mitigation then repairs a copy of it, into ``OUT/removal/<run>/defenses.json``. Both steps are
resumable: rerun the same command and finished work is skipped.

Per cell and seed (``removal_matrix.csv``): ASR, robust accuracy (R-Acc) and clean accuracy before
and after, BackdoorBench's DER, the clean images used and the defence's wall time beside the
victim's training time. The table (``removal_matrix.md``) gives per cell the mean ASR after, R-Acc,
accuracy change and DER over the seeds, and in how many seeds the ASR falls under 10 %; the last
column counts, per row, the mitigations it survives (ASR under 10 % in fewer than half its seeds).

    python experiments/removal_matrix.py --data mnist --data-root DIR --seeds 0 1 2 --out runs/removal
    python experiments/removal_matrix.py --data cifar10 --data-root DIR --recipe configs/cifar10-cpu.yaml \\
        --rates-from experiments/results/equal-visibility-cifar10/equal_visibility.json ...
    python experiments/removal_matrix.py ... --rows patch --table-only   # the table so far
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from perturbd.config import DefenseSpec, apply_overrides
from perturbd.defenses import get_defense, list_defenses
from perturbd.errors import ConfigError, exit_code
from perturbd.runs.folder import RunDir
from perturbd.runs.results import REMOVAL_KINDS
from perturbd.runs.rundir import read_json, write_json
from perturbd.sweep.config import Sweep, SweepConfig, expand
from perturbd.sweep.rate_search import finished
from perturbd.sweep.runner import run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from equal_visibility import KINDS, base_config, defend  # the sibling script's rows and defending

HERE = Path(__file__).resolve().parent
INVISIBLE = ("grid", "adaptive", "blended", "sig", "wanet")
PATCH = {"trigger": {"kind": "patch", "amplitude": 255, "size": 3}, "poison": {"rate": 0.01}}
REMOVED = 0.10
"""A mitigation removes the backdoor of a seed when the ASR after it is under this."""
GOAL = 0.9
"""A row whose mean ASR before is under this was not learned: its cells are marked."""
RATES_FROM = {
    "mnist": HERE / "results/equal-visibility/equal_visibility.json",
    "mnist5k": HERE / "results/equal-visibility/equal_visibility.json",
    "cifar10": HERE / "results/equal-visibility-cifar10/equal_visibility.json",
}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "cifar10", "mnist5k"], default="mnist", help="mnist5k: the embedded slice")
    parser.add_argument("--data-root", type=Path, default=None, help="folder of the shared data sets (MNIST/, cifar10-jpeg/)")
    parser.add_argument("--rows", nargs="+", choices=[*INVISIBLE, "patch"], default=[*INVISIBLE, "patch"])
    parser.add_argument("--psnr", type=float, default=34.5, help="the invisible rows' visibility, mean PSNR in dB")
    parser.add_argument("--rates-from", type=Path, default=None, help="equal_visibility.json giving each row's rate (default: the data's)")
    parser.add_argument("--rate", dest="rate_sets", action="append", default=[], help="KIND=RATE: a row's rate, instead of the table's")
    parser.add_argument("--mitigations", nargs="+", default=None, help="registered mitigations (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recipe", type=Path, default=None, help="a config whose model and train sections every run takes")
    parser.add_argument("--epochs", type=int, default=None, help="victim epochs (default: the recipe's; without one 8)")
    parser.add_argument("--workers", default="1", help="runs trained at once (the sweep's workers)")
    parser.add_argument("--param", dest="params", action="append", default=[], help="mitigation parameter NAME.KEY=VALUE")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value for every run")
    parser.add_argument("--table-only", action="store_true", help="train and defend nothing: the table of what is on disk")
    parser.add_argument("--out", type=Path, default=Path("runs/removal"))
    return parser.parse_args(argv)


def mitigations(names: list[str] | None, params: list[str]) -> list[DefenseSpec]:
    """The mitigations and training-time defences at their defaults, then ``--param``."""
    known = [n for n in list_defenses() if get_defense(n).kind in REMOVAL_KINDS]
    chosen = names or known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ConfigError(f"not a registered mitigation: {', '.join(unknown)} (mitigations: {', '.join(known)})")
    given = apply_overrides({}, params)
    for name, values in given.items():
        if name not in chosen or not isinstance(values, dict):
            raise ConfigError(f"--param takes NAME.KEY=VALUE with NAME one of {', '.join(chosen)}, got {name}")
    return [DefenseSpec(name=n, params=given.get(n, {})) for n in chosen]


def row_rates(args: argparse.Namespace) -> dict[str, float]:
    """Each invisible row's rate: ``--rate KIND=RATE``, else the equal-visibility table's smallest
    rate at ``--psnr`` (a row the table has no rate for needs ``--rate``)."""
    given = {}
    for item in args.rate_sets:
        kind, _, value = item.partition("=")
        try:
            given[kind] = float(value)
        except ValueError:
            raise ConfigError(f"--rate takes KIND=RATE (a fraction), got {item!r}") from None
    path = args.rates_from or RATES_FROM[args.data]
    table = read_json(path)["rows"] if path.is_file() else []
    found = {r["kind"]: r["smallest_rate"] for r in table if r["psnr_goal"] == args.psnr and r.get("smallest_rate")}
    rates = {}
    for kind in (k for k in args.rows if k in INVISIBLE):
        rate = given.get(kind, found.get(kind))
        if rate is None:
            raise ConfigError(f"{path} gives no rate where {kind} is learned at {args.psnr:g} dB; give one with --rate {kind}=RATE")
        rates[kind] = rate
    return rates


def sweep(args: argparse.Namespace) -> Sweep:
    """The backdoored models: one variant per row, every seed; clean twins shared in ``OUT/runs``."""
    ev = argparse.Namespace(data=args.data, data_root=args.data_root, recipe=args.recipe, epochs=args.epochs, sets=args.sets)
    variants = [{"trigger": {**KINDS[k], "psnr": args.psnr}, "poison": {"rate": r}} for k, r in row_rates(args).items()]
    if "patch" in args.rows:
        variants.append(PATCH)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    spec = SweepConfig(name="removal", base=base_config(ev), variants=variants, seeds=args.seeds, workers=workers, out=args.out / "runs")
    return expand(spec)


def records(runs: list[tuple[Any, Path]], out: Path) -> list[dict[str, Any]]:
    """One record per (run, mitigation) defended so far: the per-seed numbers of the CSV."""
    rows = []
    for cfg, folder in runs:
        dest = RunDir(out / folder.name)
        if not dest.defenses_path.is_file():
            continue
        timing = RunDir(folder).timing()
        for rep in dest.defenses()["defenses"]:
            if rep.get("kind") not in REMOVAL_KINDS:
                continue
            m = rep["metrics"]
            rows.append({
                "row": cfg.trigger.kind, "psnr": cfg.trigger.psnr, "rate": cfg.poison.rate, "seed": cfg.seed, "run": folder.name,
                "mitigation": rep["name"], "asr_before": m["asr_before"], "asr_after": m["asr_after"],
                "robust_accuracy_before": m["robust_accuracy_before"], "robust_accuracy_after": m["robust_accuracy_after"],
                "accuracy_before": m["clean_accuracy_before"], "accuracy_after": m["clean_accuracy_after"], "der": m["der"],
                "clean_images_used": m["clean_images_used"], "defence_seconds": m["seconds"],
                "victim_train_seconds": timing.get("train_backdoored"),
            })  # fmt: skip
    return rows


def table(recs: list[dict[str, Any]], specs: list[DefenseSpec]) -> str:
    """The markdown table: a row per trigger, a column per mitigation."""
    names = [s.report_name for s in specs]
    triggers = list(dict.fromkeys(r["row"] for r in recs))
    head = "| trigger (rate) | ASR before | " + " | ".join(names) + " | survives |"
    lines = [head, "|---|---:|" + "---|" * len(names) + "---:|"]
    for trig in triggers:
        mine = [r for r in recs if r["row"] == trig]
        seeds = sorted({r["seed"] for r in mine})
        cells, survived = [], 0
        for name in names:
            cell = [r for r in mine if r["mitigation"] == name]
            if not cell:
                cells.append("–")
                continue
            removed = sum(r["asr_after"] < REMOVED for r in cell)
            survived += removed < len(cell) / 2
            asr, racc = fmean([r["asr_after"] for r in cell]), fmean([r["robust_accuracy_after"] for r in cell])
            change, der = fmean([r["accuracy_after"] - r["accuracy_before"] for r in cell]), fmean([r["der"] for r in cell])
            seconds = fmean([r["defence_seconds"] for r in cell])
            cells.append(
                f"ASR {100 * asr:.1f} %, R-Acc {100 * racc:.1f} %, Δacc {100 * change:+.2f} pt, DER {der:.3f}; "
                f"{removed}/{len(cell)} < 10 %; {seconds:.0f} s"
            )
        first = mine[0]
        level = "" if first["psnr"] is None else f", {first['psnr']:g} dB"
        label = f"{trig} ({100 * first['rate']:g} %{level}; seeds {', '.join(map(str, seeds))})"
        before = 100 * fmean([r["asr_before"] for r in mine])
        if before < 100 * GOAL:
            label += f"; not learned (ASR under {100 * GOAL:g} %): its cells say nothing of removal"
        lines.append(f"| {label} | {before:.1f} % | " + " | ".join(cells) + f" | {survived} of {sum(c != '–' for c in cells)} |")
    victim = [r["victim_train_seconds"] for r in recs if r["victim_train_seconds"]]
    foot = (
        f"\n\nSeeds {', '.join(map(str, sorted({r['seed'] for r in recs})))}. Each cell: means over the seeds of the ASR and "
        "R-Acc after the mitigation, its clean-accuracy change and BackdoorBench's DER; in how many seeds the ASR falls under "
        f"10 %; its mean wall time (the victim trains in {fmean(victim):.0f} s on the same machine). "
        if victim
        else "\n\n"
    )
    return "\n".join(lines) + foot + "survives: the mitigations that bring the ASR under 10 % in fewer than half the seeds.\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = options(argv)
    specs = mitigations(args.mitigations, args.params)
    full = sweep(args)
    if not args.table_only:
        result = run_sweep(full, log=lambda m: print(m, flush=True))
        if result.failed:
            raise SystemExit(f"{len(result.failed)} runs failed (rerun to retry): {result.failed[0]['error']}")
    runs = finished(full)
    if not args.table_only:
        for _, folder in runs:
            defend(folder, args.out / "removal", specs)
    recs = records(runs, args.out / "removal")
    args.out.mkdir(parents=True, exist_ok=True)
    if recs:
        with (args.out / "removal_matrix.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(recs[0]))
            writer.writeheader()
            writer.writerows(recs)
    write_json(args.out / "removal_matrix.json", {"data": args.data, "psnr": args.psnr, "seeds": args.seeds, "records": recs})
    md = table(recs, specs)
    (args.out / "removal_matrix.md").write_text(md)
    print(md)
    return recs


def cli(argv: list[str] | None = None) -> int:
    """:func:`main`, with a user's mistake (a bad ``--rate``, an unknown mitigation) as one line and exit code 2."""
    return exit_code(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
