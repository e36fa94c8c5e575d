"""Run defences on a trained model and measure them with the metrics of DESIGN.md.

:func:`run_defenses` builds every defence first (a bad parameter or kind fails before any work),
then :func:`evaluate_defense` fits and measures each one the way its kind says
(:data:`perturbd.evaluation.kinds.KINDS`; what each kind reports:
:mod:`perturbd.evaluation.evaluators`); :func:`write_defenses` adds the reports to the folder's
``defenses.json``, where results accumulate per defence and parameters
(:mod:`perturbd.evaluation.record`: a rerun of the same one is skipped by :func:`run_defenses`
unless the caller asks for it, and then replaces the earlier entry), and draws the figures.

A defence's ``seed`` left at None is filled with ``derived_seed(seed, "defense:<name>")`` from
the run seed (:func:`~perturbd.defenses.base.seed_from_run`); a seed the user set is kept; the
report's params record the seed used.

The defender's clean images never overlap the test images used to measure: they come from the
training split's images the attacker did not touch, neither poisoned nor noise-mode (see
:func:`~perturbd.evaluation.inputs.defender_clean_set`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from perturbd.config import DefenseSpec, repeated_report_name
from perturbd.defenses.base import Defense, Figures, build_defense, seed_from_run
from perturbd.errors import ConfigError, DataError
from perturbd.evaluation import record
from perturbd.evaluation.inputs import DefenseInputs
from perturbd.evaluation.kinds import kind_of
from perturbd.progress import Log, stage
from perturbd.provenance import code_identity
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import read_json


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


def run_defenses(
    specs: list[DefenseSpec],
    inp: DefenseInputs,
    *,
    log: Log | None = None,
    eval_limit: int = 2000,
    done: Sequence[dict[str, Any]] = (),
) -> list[DefenseReport]:
    """Build every defence, find its kind and check the inputs have what that kind needs first (so
    a bad parameter or kind, or a training-time defence on a trained model alone, fails before any
    work), then run each: a progress stage of one step per defence on the active monitor
    (:mod:`perturbd.progress`; each defence's own stages inside it). Each report is named by its
    spec's :attr:`~DefenseSpec.report_name` (a labelled variant under its label: :func:`labelled`);
    two specs of one name are a ConfigError.

    ``done``: the entries of a record already in the output folder (:func:`perturbd.evaluation.record.entries`);
    a spec whose name and parameters (its seed filled from the run's) match one of them is not run
    again, and ``log`` says so. Returns the reports of the defences run."""
    problem = repeated_report_name(specs)
    if problem is not None:
        raise ConfigError(problem)
    defenses = [build_defense(s.name, **s.params) for s in specs]
    for d in defenses:
        kind_of(d).check(d, inp)
        seed_from_run(d, inp.seed)
    reports = []
    with stage("defenses", len(specs)) as progress:
        for spec, d in progress.over(zip(specs, defenses, strict=True)):
            earlier = record.find(done, spec.report_name, d.get_params())
            if earlier is not None:
                if log:
                    when = f" (run {earlier['when']})" if isinstance(earlier.get("when"), str) else ""
                    log(
                        f"defense {spec.report_name}: already in {RunDir.DEFENSES} with these parameters{when}, "
                        "skipped; --rerun runs it again"
                    )
                continue
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


def read_record(folder: Path) -> dict[str, Any] | None:
    """The defences' record in ``folder`` (None if it has none); a one-line :class:`DataError` if
    the file is there but is not a record: checked before any defence runs."""
    path = RunDir(folder).defenses_path
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read ({type(err).__name__}: {err}); move it away or give another --out") from None
    record.entries(data, path)
    return cast(dict[str, Any], data)


def write_defenses(folder: Path, reports: list[DefenseReport], clean_source: str) -> None:
    """Add the reports to the defences' record in ``folder`` (:func:`perturbd.evaluation.record.merge`:
    an earlier entry of the same defence and parameters is replaced, any other kept), with the
    code that defended (:func:`~perturbd.provenance.code_identity`) and the time, write it
    (:meth:`~perturbd.runs.folder.RunDir.write_defenses`) and draw every report's figures."""
    folder = Path(folder)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged = record.merge(read_record(folder), [r.to_json() for r in reports], clean_source, code_identity(), when)
    RunDir(folder).write_defenses(merged)
    for r in reports:
        for filename, draw in r.figures.items():
            draw(folder / filename)
