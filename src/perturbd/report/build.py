"""``perturbd report PATH``: a run directory → its ``report.html``; a folder of runs → the
aggregated table (``aggregate.csv``, ``aggregate.md``, ``runs.csv``), ``masks.csv`` (the
model-computed masks the runs used, when any did), ``figures/*.png``, a ``report.html`` for every
run and one for the whole folder; ``--pivot KEY`` adds the ASR table with KEY's values as columns
(``pivot_KEY.md``); ``--out DIR`` puts them in DIR.

A run whose ``metrics.json`` does not read as this version's (written by another perturbd version,
or corrupt) does not stop the report: the tables show the metrics it has (one it lacks is blank,
``(n=k/N)``), it gets no page of its own, and :attr:`Report.warnings` and the folder's page say so,
one line per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbd.errors import ConfigError
from perturbd.report.aggregate import (
    Group,
    RunRecord,
    aggregate,
    collect_runs,
    pivot_markdown,
    provenance,
    report_root,
    runs_csv,
    to_csv,
    to_markdown,
)
from perturbd.report.html import run_html, sweep_html
from perturbd.report.masks import masks_csv
from perturbd.report.plots import write_figures
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import read_failures, read_json


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    root: Path
    html: Path
    records: list[RunRecord] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    markdown: str = ""
    #: one line per run whose metrics do not read as this version's (shown in part, without a page)
    warnings: list[str] = field(default_factory=list)

    @property
    def single_run(self) -> bool:
        return RunDir(self.root).is_run()


def build_report(path: Path, out: Path | None = None, pivot: str | None = None) -> Report:
    """Write the reports for ``path`` (a run directory or any folder holding run directories)
    into ``out`` (default: ``path`` itself; each run's ``report.html`` goes to the same place
    under ``out`` as the run under ``path``); ``pivot``: a varying config key for
    :func:`pivot_markdown` (checked before anything is written)."""
    root = report_root(path)
    dest = Path(out).expanduser() if out is not None else root
    if RunDir(root).is_run():
        if pivot is not None:
            raise ConfigError(f"--pivot {pivot}: {root} is one run; pivot a folder of runs (a sweep's --out)")
        return Report(root, run_html(root, dest), collect_runs(root))
    records = collect_runs(root)
    failures = read_failures(root)
    columns, groups = aggregate(records)
    tables = [
        ("aggregate.csv", to_csv(columns, groups)),
        ("aggregate.md", provenance(records, root) + to_markdown(columns, groups)),
        ("runs.csv", runs_csv(records)),
    ]
    masks = masks_csv(records)
    if masks is not None:
        tables.append(("masks.csv", masks))
    if pivot is not None:
        tables.append((f"pivot_{pivot}.md", pivot_markdown(columns, groups, pivot)))
    dest.mkdir(parents=True, exist_ok=True)
    warnings = [f"{r.problem} (shown with the metrics it has, without a page of its own)" for r in records if r.problem]
    for r in records:
        if r.problem is None:
            run_html(r.path, dest / r.path.relative_to(root))
    files = []
    for name, text in tables:
        (dest / name).write_text(text)
        files.append(dest / name)
    figures = write_figures(columns, groups, dest / "figures")
    files += [p for _, p in figures]
    expected = None
    if (root / "sweep.json").is_file():
        expected = len(read_json(root / "sweep.json").get("runs", [])) or None
    html = sweep_html(root, records, columns, groups, figures, failures, expected, dest, warnings)
    return Report(root, html, records, columns, groups, [*files, html], failures, to_markdown(columns, groups), warnings)
