"""Run defences on a trained model and measure them with the metrics of DESIGN.md.

:func:`run_defenses` builds every defence first (a bad parameter or kind fails before any work),
then :func:`evaluate_defense` fits and measures each one the way its kind says
(:data:`perturbd.evaluation.kinds.KINDS`; what each kind reports:
:mod:`perturbd.evaluation.evaluators`); :func:`write_defenses` writes the reports and figures.

A defence's ``seed`` left at None is filled with ``derived_seed(seed, "defense:<name>")`` from
the run seed (:func:`~perturbd.defenses.base.seed_from_run`); a seed the user set is kept; the
report's params record the seed used.

The defender's clean images never overlap the test images used to measure: they come from the
training split's images the attacker did not touch, neither poisoned nor noise-mode (see
:func:`~perturbd.evaluation.inputs.defender_clean_set`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from perturbd.config import DefenseSpec, repeated_report_name
from perturbd.defenses.base import Defense, Figures, build_defense, seed_from_run
from perturbd.errors import ConfigError
from perturbd.evaluation.inputs import DefenseInputs
from perturbd.evaluation.kinds import kind_of
from perturbd.progress import Log, stage
from perturbd.provenance import code_identity
from perturbd.runs.folder import RunDir


@dataclass
class DefenseReport:
    """One defence's numbers, its matrix cell and its figures (written by :func:`write_defenses`)."""

    name: str
    kind: str
    params: dict[str, Any]
    seconds: float
    clean_used: int
    metrics: dict[str, Any]
    cell: dict[str, Any]
    figures: Figures = field(default_factory=dict)
    defense: str | None = None
    """The registered defence when ``name`` is a variant's label (:func:`labelled`); else None."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "params": self.params, "seconds": self.seconds,
            "clean_images_used": self.clean_used, "metrics": self.metrics, "cell": self.cell, "figures": sorted(self.figures),
        } | ({"defense": self.defense} if self.defense else {})  # fmt: skip


def evaluate_defense(defense: Defense, inp: DefenseInputs, *, eval_limit: int = 2000) -> DefenseReport:
    """Fit ``defense`` and measure it the way its kind says (what each kind reports:
    :mod:`perturbd.evaluation.evaluators`).

    ``eval_limit`` caps the clean and the triggered test images screened by input detectors (a
    stratified seeded sample, see :func:`~perturbd.evaluation.detection.screened_sample`). An unset ``seed`` of ``defense`` is
    filled from ``inp.seed`` first, so the report's params hold the seed used.
    A defence whose kind is not in :data:`~perturbd.evaluation.kinds.KINDS` is a ConfigError naming those.
    """
    kind = kind_of(defense)
    seed_from_run(defense, inp.seed)
    started = time.perf_counter()
    metrics, cell, figures = kind.evaluate(defense, inp, eval_limit)
    seconds = time.perf_counter() - started
    return DefenseReport(defense.name, defense.kind, defense.get_params(), seconds, defense.clean_used_, metrics, cell, figures)


def run_defenses(specs: list[DefenseSpec], inp: DefenseInputs, *, log: Log | None = None, eval_limit: int = 2000) -> list[DefenseReport]:
    """Build every defence and find its kind first (so a bad parameter or kind fails before any
    work), then run each: a progress stage of one step per defence on the active monitor
    (:mod:`perturbd.progress`; each defence's own stages inside it). Each report is named by its spec's :attr:`~DefenseSpec.report_name`
    (a labelled variant under its label: :func:`labelled`); two specs of one name are a ConfigError."""
    problem = repeated_report_name(specs)
    if problem is not None:
        raise ConfigError(problem)
    defenses = [build_defense(s.name, **s.params) for s in specs]
    for d in defenses:
        kind_of(d)
    reports = []
    with stage("defenses", len(specs)) as progress:
        for spec, d in progress.over(zip(specs, defenses, strict=True)):
            report = labelled(evaluate_defense(d, inp, eval_limit=eval_limit), spec.report_name)
            if log:
                log(f"defense {report.name}: {report.cell['text']} ({report.seconds:.1f} s)")
            reports.append(report)
    return reports


def labelled(report: DefenseReport, label: str) -> DefenseReport:
    """``report`` under ``label`` (a variant's name): its ``name``, and its figures' file names
    (``<defence>_x.png`` → ``<label>_x.png``, any other ``x.png`` → ``<label>_x.png``), so that
    two variants of one defence write apart; the registered defence is kept as ``defense``."""
    if label == report.name:
        return report
    figures = {(label + f[len(report.name) :] if f.startswith(report.name) else f"{label}_{f}"): draw for f, draw in report.figures.items()}
    return replace(report, name=label, figures=figures, defense=report.name)


def write_defenses(folder: Path, reports: list[DefenseReport], clean_source: str) -> None:
    """Write the defences' record (:meth:`~perturbd.runs.folder.RunDir.write_defenses`, with the code
    that defended: :func:`~perturbd.provenance.code_identity`) and every report's figures into ``folder``."""
    folder = Path(folder)
    record = {"clean_source": clean_source, "code": code_identity(), "defenses": [r.to_json() for r in reports]}
    RunDir(folder).write_defenses(record)
    for r in reports:
        for filename, draw in r.figures.items():
            draw(folder / filename)
