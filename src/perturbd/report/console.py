"""Rich displays for the CLI: training progress and the summary tables of runs, sweeps and defences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from perturbd.report.aggregate import METRICS, TABLE_METRICS, cell
from perturbd.results import RunMetrics, pct

__all__ = ["RichMonitor", "SweepMonitor", "aggregate_table", "defense_table", "make_progress", "pct", "summary_table"]


class RichMonitor:
    """Training progress as a rich bar: steps, epoch, loss and images per second."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, description: str, total_steps: int) -> None:
        self.task = self.progress.add_task(description, total=total_steps, info="")

    def step(self, images: int) -> None:
        self.progress.advance(self.task)

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        self.progress.update(self.task, info=f"epoch {epoch} · loss {loss:.3f} · {images_per_s:,.0f} img/s")

    def stop(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[-1].total)


def make_progress(console: Console) -> Progress:
    """The training progress display: description, bar, steps, epoch info, elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def summary_table(metrics: RunMetrics, run_dir: Path) -> Table:
    """The headline numbers of one run: the rows of :meth:`RunMetrics.rows`."""
    t = Table(title=f"perturbd run · {run_dir}", show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for what, value in metrics.rows():
        t.add_row(what, value)
    return t


class SweepMonitor(RichMonitor):
    """One training bar reused by every run of an in-process sweep."""

    def start(self, description: str, total_steps: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(description, total=total_steps, info="")
        else:
            self.progress.reset(self.task, total=total_steps, description=description, info="")


def aggregate_table(report: Any, title: str) -> Table:
    """The aggregated sweep table: distinguishing config columns, seeds, mean ± 95 % CI."""
    t = Table(title=title, header_style="bold")
    for c in [*report.columns, "seeds"]:
        t.add_column(c, no_wrap=True)
    for m in TABLE_METRICS:
        t.add_column(METRICS[m][1], justify="right")
    for g in report.groups:
        t.add_row(*(str(g.keys[c]) for c in report.columns), ",".join(map(str, g.seeds)), *(cell(g.stats[m], METRICS[m][2]) for m in TABLE_METRICS))
    return t


def defense_table(reports: list[Any], title: str) -> Table:
    """One row per defence: kind, the matrix cell, clean images used, seconds."""
    t = Table(title=title, header_style="bold")
    for col in ("defense", "kind", "result", "clean images", "seconds"):
        t.add_column(col, justify="right" if col in ("clean images", "seconds") else "left")
    for r in reports:
        t.add_row(r.name, r.kind, r.cell["text"], str(r.clean_used), f"{r.seconds:.1f}")
    return t


