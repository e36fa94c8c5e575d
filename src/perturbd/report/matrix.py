"""The attack × defence matrix: rows are runs (trigger, setting, knowledge, rate), columns are
defences, cells are detection AUROC (screening), the target's anomaly index (Neural Cleanse) or
the ASR after mitigation with its clean-accuracy cost. Written as Markdown and CSV; when an attack
was run with several seeds, the Markdown starts with one row per attack that lists each seed's
value and how many seeds a detector flags the target in.

Example:
    >>> from perturbd.report.matrix import matrix_rows, write_matrix
    >>> rows = matrix_rows(["runs/mnist-grid-1a2b3c4d", "runs/mnist-patch-5e6f7a8b"])  # doctest: +SKIP
    >>> write_matrix(rows, "reports")  # doctest: +SKIP  (reports/matrix.md, reports/matrix.csv)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from perturbd.evaluation.kinds import dots, over_seeds
from perturbd.evaluation.record import entries, labels
from perturbd.runs.folder import RunDir, trigger_section
from perturbd.runs.results import METRICS, REMOVAL

#: a mitigation's cell values besides ``value`` (the ASR after) that the CSV gives a column each
CELL_EXTRAS = ("accuracy_cost", "robust_accuracy", "der")
#: a mitigation's metrics that the CSV gives a column each: what it cost (they vary from run to
#: run, so they stay out of the cell, which ``metrics.json`` holds too)
METRIC_EXTRAS = ("clean_images_used", "seconds")


def _row_label(cfg: dict[str, Any]) -> str:
    """``grid c=10, before_training/full, rate 5 %``: the trigger's label, the attack, the rate."""
    attack = cfg.get("attack", {})
    rate = cfg.get("poison", {}).get("rate", 0)
    return f"{trigger_section(cfg).label}, {attack.get('setting', '?')}/{attack.get('knowledge', '?')}, rate {100 * rate:g} %"


def matrix_row(run_dir: Path | str) -> dict[str, Any]:
    """One matrix row from a run directory whose defences ran (:meth:`RunDir.defenses`)."""
    folder = RunDir(run_dir)
    reports = entries(folder.defenses(), folder.defenses_path)
    names = labels(reports)  # a defence run with several parameter sets: one column each
    metrics = folder.metrics()
    return {
        "run": folder.name,
        "label": _row_label(folder.settings()),
        "seed": metrics.seed,
        "clean_accuracy": metrics.clean_accuracy,
        "asr": metrics.attack_success_rate,
        "cells": {n: r["cell"] for n, r in zip(names, reports)},
        "kinds": {n: r.get("kind") for n, r in zip(names, reports)},
        "metrics": {n: r.get("metrics", {}) for n, r in zip(names, reports)},
    }


def matrix_rows(run_dirs: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Rows for several run directories, in the order given."""
    return [matrix_row(d) for d in run_dirs]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row["cells"] if c not in cols]
    return cols


def _over_seeds(kind: str | None, runs: list[dict[str, Any]], name: str) -> str:
    """One defence on the seeds of one attack: each seed's value, in seed order, in the form its
    kind gives (:func:`perturbd.evaluation.kinds.over_seeds`)."""
    cells = [r["cells"][name] for r in runs if r["cells"].get(name) is not None]
    if len(cells) < len(runs):
        return f"run on {len(cells)} of {len(runs)} seeds"
    return over_seeds(kind, cells, [r["metrics"].get(name, {}) for r in runs])


def seeds_markdown(rows: list[dict[str, Any]]) -> str:
    """One row per attack (runs with the same label), the seeds in order: clean accuracy and ASR
    per seed, then per defence each seed's AUROC (and TPR at 5 % FPR), Neural Cleanse's verdict
    on the target (flagged in k of N seeds, its anomaly index per seed) or the ASR after mitigation
    per seed with the mean clean-accuracy change."""
    cols = _columns(rows)
    attacks: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        attacks.setdefault(r["label"], []).append(r)
    head = ["attack (seeds)", *(f"{METRICS[m].label} per seed" for m in ("clean_accuracy", "attack_success_rate")), *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in attacks.items():
        runs = sorted(runs, key=lambda r: r["seed"] if r["seed"] is not None else -1)
        kinds = {c: next((r["kinds"].get(c) for r in runs if r["kinds"].get(c)), None) for c in cols}
        base = [
            f"{label} ({', '.join(str(r['seed']) for r in runs)})",
            dots([100 * r["clean_accuracy"] for r in runs], ".2f"),
            dots([100 * r["asr"] for r in runs], ".1f"),
        ]
        lines.append("| " + " | ".join(base + [_over_seeds(kinds[c], runs, c) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def matrix_markdown(rows: list[dict[str, Any]]) -> str:
    """The matrix as a Markdown table (cell texts; a blank where a run lacks that defence),
    after :func:`seeds_markdown` when some attack has more than one run."""
    cols = _columns(rows)
    labels = [r["label"] for r in rows]
    over_seeds = len(set(labels)) < len(labels)
    head = ["run", "clean acc", "ASR", *cols]
    lines = ["## Over seeds", "", seeds_markdown(rows), "## Each run", ""] if over_seeds else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = [f"{r['label']} (seed {r['seed']})", f"{100 * r['clean_accuracy']:.2f} %", f"{100 * r['asr']:.1f} %"]
        cells = [r["cells"].get(c, {}).get("text", "") for c in cols]
        lines.append("| " + " | ".join(base + cells) + " |")
    legend = (
        "\nCells: dataset/input screening → AUROC (TPR / FPR at the method's own threshold; TPR at 5 % FPR); neural_cleanse → "
        "flagged labels and the target's anomaly index (> 2 flags); mitigations → ASR before→after, "
        f"{REMOVAL['robust_accuracy_after'].legend}, {REMOVAL['der'].legend}, clean-accuracy change, clean images used and the "
        "defence's wall time."
    )
    return "\n".join(lines) + "\n" + legend + "\n"


def write_matrix(rows: list[dict[str, Any]], folder: Path | str, stem: str = RunDir.MATRIX) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` into ``folder``; returns both paths.

    CSV columns per defence: ``<name>`` (the cell value: AUROC, anomaly index or ASR after) and,
    for mitigations, ``<name>_accuracy_cost`` (clean accuracy before − after), and where the cells
    hold them (runs defended by this version) ``<name>_robust_accuracy`` (R-Acc after) and
    ``<name>_der`` (:data:`~perturbd.runs.results.REMOVAL`), all fractions, then
    ``<name>_clean_images_used`` and ``<name>_seconds`` (the fit's wall time).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"{stem}.md", folder / f"{stem}.csv"
    md.write_text(matrix_markdown(rows))
    cols = _columns(rows)
    header = ["run", "label", "seed", "clean_accuracy", "asr"]
    extra = {c: [k for k in CELL_EXTRAS if any(k in r["cells"].get(c, {}) for r in rows)] for c in cols}
    facts = {c: [k for k in METRIC_EXTRAS if any(k in r["metrics"].get(c, {}) for r in rows)] for c in cols}
    for c in cols:
        header += [c, *(f"{c}_{k}" for k in extra[c] + facts[c])]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for r in rows:
            out: dict[str, Any] = {k: r[k] for k in ("run", "label", "seed", "clean_accuracy", "asr")}
            for c in cols:
                cell = r["cells"].get(c, {})
                out[c] = cell.get("value")
                out.update({f"{c}_{k}": cell.get(k) for k in extra[c]})
                out.update({f"{c}_{k}": r["metrics"].get(c, {}).get(k) for k in facts[c]})
            writer.writerow(out)
    return md, csv_path
