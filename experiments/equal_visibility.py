"""Invisible triggers at equal visibility: which one needs the fewest poisoned images?

For each trigger kind (the paper's static grid and chessboard, its adaptive DeepFool L∞ mask, and
the invisible triggers that came after it: blended, sig, wanet, ftrojan, bpp, adap_blend, and the
model-computed lf and narcissus; and the control, a seeded random ±c mask with neither structure
nor adaptivity) at each visibility level (mean
PSNR of the poisoned images, ``trigger.psnr``: 34.5 dB and 38.9 dB by default, those of the
paper's grids of c = 10 and c = 6 on MNIST), it finds the smallest injection rate of the grid
``--rates`` at which the backdoor reaches ASR ≥ 90 % in most seeds, and reports at that rate the
clean-model ASR, the accuracy loss, and what four defences see: the detection AUROC of STRIP
(inputs), activation clustering and spectral signatures (training samples), and Neural Cleanse's
verdict on the target label (flagged in how many seeds; mean anomaly index). Each defence runs at
its paper's defaults and, beside them, under their own names, the variants that
``defense_matrix.yaml`` lists (its labelled specs, e.g. ``spectral_signature_k5``; a tuned
value comes from experiments/tune_defenses.py, run on other seeds than these).

Every kind is poisoned the same way (dirty label: relabelled to the target, ``poison.mode`` left
at its default) so that the rates compare the triggers, not the labelling; wanet keeps its noise
mode (2 noise images per poisoned one, the paper's default), sig its default frequency, and
adap_blend its cover images (``cover_rate`` 0.003 of the training set) and its stronger test α;
narcissus, a clean-label trigger in its paper, is poisoned dirty-label here like the others, and
without its test-time magnification (the ASR uses the trigger whose PSNR was matched).

Two phases, both resumable (rerun the same command: finished work is skipped):

1. the rates, as ``perturbd sweep`` runs (kinds × levels as variants, ``poison.rate`` as the axis,
   ``--seeds``) into ``OUT/rates`` (the clean twins shared in ``OUT/rates/.twins``). By default
   (``--search bisect``) a row does not train every rate of the grid: it bisects the sorted grid
   for the smallest rate at which most seeds reach the goal, all seeds at each rate it tries
   (at most ⌈log2(rates + 1)⌉ rates a row: 4 of the 8 by default, at most half the grid's
   runs). That assumes a row that reaches the goal at one rate reaches it at every larger
   one; the table lists the rates each row tried, and ``--search grid`` trains them all (the
   search: :mod:`perturbd.sweep.rate_search`);
2. the defences, on the saved runs of each row's smallest rate (no retraining: the models are
   read back as ``perturbd defend`` reads them), each into ``OUT/defended/<run>/``, with the
   specs of ``defense_matrix.yaml`` (defaults and labelled variants) of the four defences. A run whose weights are not on disk (results are
   committed without them) is trained again first, and its weights are used only if it
   reproduces the stored numbers exactly (:func:`restore_weights`); on another CPU it does not,
   and ``--defend-retrained`` defends the retrain instead, its numbers recorded beside.

The table goes to ``OUT/equal_visibility.md`` and ``.json``.

    python experiments/equal_visibility.py --data mnist --data-root /work/shared/datasets \\
        --seeds 0 1 2 --out runs/equal-visibility
    python experiments/equal_visibility.py --data cifar10 --data-root DIR --recipe configs/cifar10-cpu-fastnet.yaml ...
    python experiments/equal_visibility.py ... --table-only     # the table so far, training and defending nothing

``--data cifar10`` reads the CIFAR-10 JPEG folder ``DATA_ROOT/cifar10-jpeg`` (``imagefolder``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from perturbd.config import DefenseSpec, ExperimentConfig, apply_overrides, read_yaml, validate
from perturbd.errors import exit_code
from perturbd.evaluation.harness import run_defenses, write_defenses
from perturbd.process import tune_process
from perturbd.runs.folder import RunDir
from perturbd.runs.reproduce import reproduce, restore
from perturbd.runs.rundir import atomic_dir, read_json, run_dir_for, write_json
from perturbd.runs.saved import load_inputs
from perturbd.sweep.config import TWINS, Sweep, SweepConfig, expand
from perturbd.sweep.rate_search import asr_by_rate, bisect_round, finished, next_probe, outcomes, smallest_rate
from perturbd.sweep.runner import run_sweep

HERE = Path(__file__).resolve().parent
GOAL = 0.9
KINDS: dict[str, dict[str, Any]] = {
    "grid": {"kind": "grid"},
    "chessboard": {"kind": "chessboard"},
    "adaptive": {"kind": "adaptive", "method": "deepfool", "norm": "linf"},
    "blended": {"kind": "blended"},
    "sig": {"kind": "sig"},
    "wanet": {"kind": "wanet"},
    "ftrojan": {"kind": "ftrojan"},
    "bpp": {"kind": "bpp"},
    "adap_blend": {"kind": "adap_blend"},
    "lf": {"kind": "lf"},
    "narcissus": {"kind": "narcissus"},
    "random": {"kind": "random"},
}
LEVELS = [34.5, 38.9]
RATES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
DEFENCES = ("strip", "activation_clustering", "spectral_signature", "neural_cleanse")
SCREENS = DEFENCES[:3]
"""The screens' columns when no defence has run yet (each variant adds its own)."""
SHORT = {"strip": "STRIP", "activation_clustering": "AC", "spectral_signature": "SS"}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=["mnist", "cifar10", "mnist5k"], default="mnist", help="mnist5k: the embedded slice, for a smoke test"
    )
    parser.add_argument("--data-root", type=Path, default=None, help="folder of the shared data sets (MNIST/, cifar10-jpeg/)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--psnr", nargs="+", type=float, default=LEVELS, help="visibility levels, mean PSNR in dB")
    parser.add_argument("--rates", nargs="+", type=float, default=RATES, help="injection rates tried (fractions of the training set)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--search", choices=["bisect", "grid"], default="bisect", help="bisect the rates of each row (default) or train every rate"
    )
    parser.add_argument("--goal-asr", type=float, default=GOAL, help="ASR a rate must reach in most seeds (a fraction)")
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="a config file whose model and train sections every run takes (e.g. configs/cifar10-cpu.yaml)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="victim epochs (default: the recipe's; without one 8, as configs/paper/epochs.yaml)"
    )
    parser.add_argument("--workers", default="auto", help="runs at once (the sweep's workers)")
    parser.add_argument("--no-defences", action="store_true", help="phase 1 only")
    parser.add_argument(
        "--table-only", action="store_true", help="train nothing: the table of the runs on disk (rows still searching say so)"
    )
    parser.add_argument(
        "--defend-retrained", action="store_true",
        help="a run whose weights are lost and whose retrain gives other numbers (another CPU): defend the retrain and say so",
    )  # fmt: skip
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        help="defence parameter NAME.KEY=VALUE, NAME a defence or a variant's label (e.g. neural_cleanse.epochs=2)",
    )
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/equal-visibility"))
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment every run starts from: the data, target 0, the recipe's model and training,
    the victim's epochs, ``--set``."""
    data: dict[str, Any] = {"name": args.data}
    if args.data == "cifar10":
        data["name"] = f"imagefolder:{(args.data_root or Path('.')) / 'cifar10-jpeg'}"
    elif args.data_root is not None:
        data["root"] = str(args.data_root)
    recipe = read_yaml(args.recipe) if args.recipe is not None else {}
    train = dict(recipe.get("train") or {})
    train["epochs"] = args.epochs or train.get("epochs") or 8
    base = {"data": data, "poison": {"target": 0}, "train": train} | ({"model": recipe["model"]} if recipe.get("model") else {})
    return apply_overrides(base, args.sets)


def rate_sweep(args: argparse.Namespace) -> SweepConfig:
    """Phase 1 as a sweep: one variant per (kind, level), the rates as its axis."""
    variants = [{"trigger": {**KINDS[k], "psnr": level}} for k in args.kinds for level in args.psnr]
    workers = args.workers if args.workers == "auto" else int(args.workers)
    return SweepConfig(
        name="equal-visibility", base=base_config(args), variants=variants, axes={"poison.rate": sorted(args.rates)},
        seeds=args.seeds, workers=workers, out=args.out / "rates",
    )  # fmt: skip


def row_key(cfg: ExperimentConfig) -> tuple[str, float]:
    return cfg.trigger.kind, float(cfg.trigger.psnr or 0)


def run_rates(args: argparse.Namespace, full: Sweep, log: Any = print) -> list[tuple[ExperimentConfig, Path]]:
    """Phase 1: every run of the grid, or the bisection's rounds; the finished runs."""
    todo, number = (full.runs if args.search == "grid" else bisect_round(full, args.goal_asr, row_key)), 1
    while todo:
        log(f"phase 1, {args.search} round {number}: {len(todo)} runs into {full.out}")
        result = run_sweep(Sweep(full.spec, todo), log=log)
        if result.failed:
            raise SystemExit(f"{len(result.failed)} runs failed (rerun to retry): {result.failed[0]['error']}")
        if args.search == "grid":
            break
        again, number = bisect_round(full, args.goal_asr, row_key), number + 1
        if again and {c.hash() for c in again} == {c.hash() for c in todo}:
            raise SystemExit(f"{run_dir_for(again[0], full.out)} has no {RunDir.METRICS}: remove it and rerun")
        todo = again
    runs = finished(full)
    write_json(full.out / "sweep.json", {"name": full.spec.name, "runs": [folder.name for _, folder in runs]})
    return runs


def defence_specs(params: list[str]) -> list[DefenseSpec]:
    """The four defences as ``defense_matrix.yaml`` lists them (each default, and its labelled
    variants beside it, in the file's order; a defence the file lacks at its defaults), then
    ``--param`` (NAME: the name a spec is reported under)."""
    matrix = validate({"defenses": read_yaml(HERE / "defense_matrix.yaml").get("defenses", [])}).defenses
    chosen = {s.report_name: s for s in matrix if s.name in DEFENCES}
    for name in DEFENCES:
        chosen.setdefault(name, DefenseSpec(name=name))
    for name, values in apply_overrides({}, params).items():
        if name not in chosen or not isinstance(values, dict):
            raise SystemExit(f"--param takes NAME.KEY=VALUE with NAME one of {', '.join(chosen)}, got {name}")
        chosen[name] = chosen[name].model_copy(update={"params": chosen[name].params | values})
    order = [s.report_name for s in matrix if s.report_name in chosen] + [n for n in DEFENCES if n not in {s.report_name for s in matrix}]
    return [chosen[name] for name in order]


RETRAINED = "retrained.json"


def restore_weights(folder: Path, *, other_ok: bool = False, log: Any = print) -> tuple[Path, dict[str, Any] | None]:
    """The run folder whose weights the defences read for the finished run ``folder``, and, when
    that is not ``folder`` itself, what tells the two apart.

    Results are committed without their weights, so a run made on another machine has its numbers
    here but not its model. It is trained again (:func:`perturbd.runs.reproduce.reproduce`: same config,
    seed and code) into ``folder/../.retrained``, with the sweep's clean twins. If it reproduces the
    stored numbers exactly, its weights are moved into ``folder`` and the defences see the model
    that was measured. If not (another CPU gives other numbers), one line says which number
    differs, and nothing is defended, unless ``other_ok`` (``--defend-retrained``): then the
    retrained run is defended, and the record returned (its numbers beside the stored ones, and the
    CPU) goes into the defences' folder as :data:`RETRAINED`."""
    if RunDir(folder).has_weights():
        return folder, None
    log(f"{folder.name}: no model weights on disk; training it again to defend it")
    tune_process(RunDir(folder).config().train.threads)  # as the sweep's worker trained it
    rep = reproduce(folder, folder.parent / ".retrained", twin_cache=folder.parent / TWINS)  # a retrain kept by a refusal is reused
    if rep.same:
        restore(rep)
        return folder, None
    if not other_ok:
        raise SystemExit(
            f"{rep.summary()}; nothing defended (--defend-retrained defends the new run, {rep.again}, and records its numbers)"
        )
    why = "the run's weights were not on disk, and training it again on this machine gave other numbers"
    return rep.again, {**rep.record(), "why": why}


def defend(folder: Path, out: Path, specs: list[DefenseSpec], *, other_ok: bool = False) -> Path:
    """The four defences on a finished run, written to ``out/<run>/`` (skipped when there), on its
    weights or, when they are not on disk, a retrain's (:func:`restore_weights`)."""
    dest = out / folder.name
    if not RunDir(dest).defenses_path.is_file():
        source, retrained = restore_weights(folder, other_ok=other_ok)
        dest.parent.mkdir(parents=True, exist_ok=True)
        inputs = load_inputs(source)
        reports = run_defenses(specs, inputs, log=lambda m: print(f"[{folder.name}] {m}", flush=True))
        with atomic_dir(dest, replace=True) as tmp:
            write_defenses(tmp, reports, inputs.clean_source)
            if retrained is not None:
                write_json(tmp / RETRAINED, retrained)
        if source != folder:
            shutil.rmtree(source)
    return dest


def defence_facts(dest: Path) -> dict[str, Any]:
    """AUROC of every screen (the defaults and their variants, by the name each is reported under)
    and Neural Cleanse's verdict on the target, from ``defenses.json``."""
    reports = {r["name"]: r["metrics"] for r in RunDir(dest).defenses()["defenses"]}
    facts: dict[str, Any] = {name: m.get("auroc") for name, m in reports.items() if "auroc" in m}
    if (dest / RETRAINED).is_file():
        facts["retrained_asr"] = read_json(dest / RETRAINED)["retrained"]["attack_success_rate"]
    nc = reports.get("neural_cleanse")
    if nc is not None:
        facts["nc_flagged"] = bool(nc.get("target_flagged"))
        facts["nc_index"] = nc.get("target_anomaly_index")
    return facts


def mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarise(args: argparse.Namespace, runs: list[tuple[ExperimentConfig, Path]], specs: list[DefenseSpec]) -> list[dict[str, Any]]:
    """One row per (kind, level): the smallest rate and, at it, the mean over seeds of each number.

    A row whose search is not over (rates it still has to train: an interrupted run, or
    ``--table-only``) is marked ``searching``; its defences wait for the search to end."""
    rows = []
    groups: dict[tuple[str, float], list[tuple[ExperimentConfig, Path]]] = {}
    for cfg, folder in runs:
        groups.setdefault(row_key(cfg), []).append((cfg, folder))
    for (kind, level), group in groups.items():
        by_rate = asr_by_rate(group)
        known = outcomes(group, len(set(args.seeds)), args.goal_asr)
        searching = next_probe(args.rates, known) is not None if args.search == "bisect" else len(known) < len(args.rates)
        # searching: the smallest rate known to reach so far is an upper bound
        rate = min((r for r, ok in known.items() if ok), default=None) if searching else smallest_rate(group, args.goal_asr)
        row: dict[str, Any] = {"kind": kind, "psnr_goal": level, "smallest_rate": rate, "seeds": sorted({c.seed for c, _ in group})}
        row["tried"] = {str(r): [sum(a >= args.goal_asr for a in asr), len(asr)] for r, asr in by_rate.items()}
        row["searching"] = searching
        row["above"] = max((r for r, ok in known.items() if not ok), default=None) if searching and rate is None else None
        at = [(c, f) for c, f in group if c.poison.rate == rate]
        if at:
            metrics = [RunDir(f).metrics() for _, f in at]
            row |= {
                "asr": mean([m.attack_success_rate for m in metrics]),
                "clean_model_asr": mean([m.clean_model_asr for m in metrics]),
                "accuracy_loss": mean([m.accuracy_loss for m in metrics]),
                "psnr_reached": mean([m.stealth.psnr_mean for m in metrics]),
                "ssim": mean([m.stealth.ssim_mean for m in metrics]),
            }
            if not row["searching"]:
                # with specs, every seed is defended (or read back); without (--table-only), the seeds defended so far
                defended = args.out / "defended"
                dests = [defend(f, defended, specs, other_ok=args.defend_retrained) if specs else defended / f.name for _, f in at]
                facts = [defence_facts(d) for d in dests if RunDir(d).defenses_path.is_file()]
                if facts:
                    screens = list(dict.fromkeys(n for x in facts for n in x if n not in ("nc_flagged", "nc_index", "retrained_asr")))
                    row |= {name: mean([x.get(name) for x in facts]) for name in screens}
                    row["screens"] = screens
                    row["nc_flagged_seeds"] = sum(bool(x.get("nc_flagged")) for x in facts)
                    row["nc_index"] = mean([x.get("nc_index") for x in facts])
                    row["defended_seeds"] = len(facts)
                    retrained = [x["retrained_asr"] for x in facts if "retrained_asr" in x]
                    if retrained:
                        row["retrained_seeds"], row["retrained_asr"] = len(retrained), mean(retrained)
        rows.append(row)
    return rows


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if value is None else f"{scale * value:.{digits}f}"


def _smallest(row: dict[str, Any]) -> str:
    """The smallest-rate cell: the rate; ``> largest`` when no rate trained reaches the goal; while
    the row is searching, the bound known so far."""
    rate = row["smallest_rate"]
    if not row.get("searching"):
        tried = [float(r) for r in row.get("tried", {})]
        return _fmt(rate, 100, 3) if rate else f"> {_fmt(max(tried), 100, 3)} (none reaches)" if tried else "none trained"
    above = row.get("above")
    bound = f"≤ {_fmt(rate, 100, 3)}" if rate else f"> {_fmt(above, 100, 3)}" if above else "?"
    return f"{bound} (searching)"


def short(name: str) -> str:
    """A screen's column: ``SS``, a variant ``SS k5`` (``spectral_signature_k5``)."""
    for long, abbr in SHORT.items():
        if name.startswith(long):
            return (abbr + name[len(long) :].replace("_", " ")).strip()
    return name


def markdown(rows: list[dict[str, Any]], goal: float = GOAL) -> str:
    screens = list(dict.fromkeys(n for r in rows for n in r.get("screens", []))) or list(SCREENS)
    head = (
        "| trigger | PSNR goal dB | smallest rate % | ASR % | clean-model ASR % | acc. loss pt | PSNR dB | "
        + "".join(f"{short(n)} | " for n in screens)
        + "NC flags t | rates tried: seeds reaching |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(screens) + "---|---|"]
    for r in sorted(rows, key=lambda r: (-r["psnr_goal"], r["kind"])):
        nc = "–" if "nc_flagged_seeds" not in r else f"{r['nc_flagged_seeds']}/{r['defended_seeds']} (index {_fmt(r['nc_index'])})"
        if "defended_seeds" in r and r["defended_seeds"] < len(r["seeds"]):
            nc += f"; defences: {r['defended_seeds']} of {len(r['seeds'])} seeds so far"
        if r.get("retrained_seeds"):
            nc += f"; {r['retrained_seeds']} defended on a retrain (ASR {_fmt(r['retrained_asr'], 100, 1)} %)"
        tried = " · ".join(f"{100 * float(rate):g} %: {k}/{n}" for rate, (k, n) in r.get("tried", {}).items())
        lines.append(
            f"| {r['kind']} | {r['psnr_goal']:g} | {_smallest(r)} | {_fmt(r.get('asr'), 100, 1)} "
            f"| {_fmt(r.get('clean_model_asr'), 100, 1)} | {_fmt(r.get('accuracy_loss'), 100)} | {_fmt(r.get('psnr_reached'))} "
            f"| {''.join(f'{_fmt(r.get(n))} | ' for n in screens)}{nc} | {tried} |"
        )
    return "\n".join(lines) + (
        f"\n\nMeans over the seeds at the smallest rate with ASR ≥ {100 * goal:g} % in most seeds; AUROC of the screens "
        "(AC, SS: the paper's defaults; a column with a suffix: a labelled variant of defense_matrix.yaml); "
        "STRIP, AC, SS and NC over the seeds defended (NC flags t: in how many of them Neural Cleanse flags the target); "
        "defended on a retrain: a run whose weights were lost, trained again with other numbers (--defend-retrained; "
        "its ASR in that cell, its record in the defences' retrained.json); "
        "the last column: each rate a row trained, with how many of its seeds reach the goal there; "
        "(searching): the row has rates left to train, and its cell is the bound known so far.\n"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = options(argv)
    full = expand(rate_sweep(args))
    runs = finished(full) if args.table_only else run_rates(args, full, log=lambda m: print(m, flush=True))
    specs = [] if args.no_defences or args.table_only else defence_specs(args.params)
    rows = summarise(args, runs, specs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "equal_visibility.json",
        {
            "data": args.data,
            "search": args.search,
            "rates": sorted(args.rates),
            "goal_asr": args.goal_asr,
            "seeds": args.seeds,
            "rows": rows,
        },
    )
    (args.out / "equal_visibility.md").write_text(markdown(rows, args.goal_asr))
    print(markdown(rows, args.goal_asr))
    return rows


def cli(argv: list[str] | None = None) -> int:
    """:func:`main`, with a user's mistake (a missing recipe, a bad ``--set``) as one line and exit code 2."""
    return exit_code(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
