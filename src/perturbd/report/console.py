"""Rich displays for the CLI: training progress and the summary tables of runs, sweeps and defences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from perturbd.report.aggregate import TABLE_METRICS, cell, seed_span
from perturbd.runs.results import METRICS, RunMetrics, pct

__all__ = ["AggregateTable", "RichMonitor", "SweepMonitor", "aggregate_table", "defense_table", "make_progress", "pct", "summary_table"]


class RichMonitor:
    """Training progress as a rich bar: steps, epoch, loss and images per second. Where the
    display is off (not a terminal: see :func:`make_progress`), one line per epoch instead."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.description = ""

    def start(self, description: str, total_steps: int) -> None:
        self.description = description
        self.task = self.progress.add_task(escape(description), total=total_steps, info="")

    def step(self, images: int) -> None:
        self.progress.advance(self.task)

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        info = f"epoch {epoch} · loss {loss:.3f} · {images_per_s:,.0f} img/s"
        self.progress.update(self.task, info=info)
        if self.progress.disable:
            self.progress.console.print(escape(f"{self.description}: {info}"), highlight=False)

    def stop(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[-1].total)


def make_progress(console: Console) -> Progress:
    """The training progress display: description, bar, steps, epoch info, elapsed time.

    Off where ``console`` is not a terminal (a log file, a pipe): a live display is drawn there
    only once, when it stops; the monitors print one line per epoch instead, as it ends.
    """
    return Progress(
        TextColumn("[bold]{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def summary_table(metrics: RunMetrics, run_dir: Path) -> Table:
    """The headline numbers of one run: the rows of :meth:`RunMetrics.rows`."""
    rows = metrics.rows()
    t = Table(title=escape(f"perturbd run · {run_dir}"), show_header=True, header_style="bold")
    t.add_column("metric", min_width=_longest_word([what for what, _ in rows]))  # "defense activation_clustering" is never cut
    t.add_column("value", justify="right")
    for what, value in rows:
        t.add_row(what, value)
    return t


def _longest_word(texts: list[str]) -> int:
    """The widest word of ``texts``: a column at least this wide wraps them at spaces and never cuts a name."""
    return max((cell_len(w) for text in texts for w in text.split()), default=1)


class SweepMonitor(RichMonitor):
    """One training bar reused by every run of an in-process sweep."""

    def start(self, description: str, total_steps: int) -> None:
        self.description = description
        if self.task is None:
            self.task = self.progress.add_task(escape(description), total=total_steps, info="")
        else:
            self.progress.reset(self.task, total=total_steps, description=escape(description), info="")


# narrow terminals: short metric headers (METRICS' short labels, explained in the caption), then
# metrics left out in this order
LEFT_OUT_FIRST = ["ssim_mean", "psnr_mean", "injection_rate", "accuracy_loss", "clean_model_asr"]


def _width(header: str, values: list[str]) -> int:
    """A column's width: its longest value, and the longest word of its header (headers wrap at spaces)."""
    return max([cell_len(v) for v in values] + [cell_len(w) for w in header.split()] + [1])


class AggregateTable:
    """The aggregated sweep table: distinguishing config columns, seeds (how many, which), mean ± 95 %
    CI per metric (the value alone for one seed).

    Laid out for the width it is printed at: full headers (wrapped at spaces) where they fit,
    else short ones explained in the caption, else the least-needed metrics left out (named in
    the caption; ``aggregate.md`` has them all). A value is never cut.
    """

    def __init__(self, report: Any, title: str) -> None:
        self.title = title
        self.keys = [*report.columns, "seeds"]
        self.rows = [[str(g.keys[c]) for c in report.columns] + [f"{len(g.runs)} ({seed_span(g.seeds)})"] for g in report.groups]
        self.cells = {m: [cell(g.stats[m], METRICS[m].fmt) for g in report.groups] for m in TABLE_METRICS}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def table(self, width: int | None = None) -> Table:
        """The table for ``width`` columns (``None``: every metric with its full header)."""
        fixed = [_width(k, [r[i] for r in self.rows]) for i, k in enumerate(self.keys)]
        # the seeds ("3 (0–2)": how many, which) wrap under their count, as narrow as the header
        fixed[-1] = _width("seeds", [r[-1].split()[0] for r in self.rows])
        metrics, labels, notes = list(TABLE_METRICS), {m: METRICS[m].label for m in TABLE_METRICS}, []

        def total() -> int:  # content + 2 padding + 1 rule per column, and the closing rule
            return sum(w + 3 for w in fixed) + sum(_width(labels[m], self.cells[m]) + 3 for m in metrics) + 1

        if width is not None and total() > width:
            labels, left_out = {m: METRICS[m].short for m in TABLE_METRICS}, []
            for m in LEFT_OUT_FIRST:
                if total() <= width:
                    break
                metrics.remove(m)
                left_out.append(METRICS[m].label)
            notes.append(" · ".join(METRICS[m].legend for m in metrics if METRICS[m].legend))
            if left_out:
                notes.append(f"left out for width: {', '.join(left_out)} (see aggregate.md)")
        t = Table(title=escape(self.title), header_style="bold", caption=escape("; ".join(notes)) or None)
        for key, w in zip(self.keys, fixed):
            t.add_column(key, width=w)
        for m in metrics:  # narrower still than all this: rich wraps values at their spaces (mean / ± CI)
            t.add_column(labels[m], justify="right", width=_width(labels[m], self.cells[m]))
        for i, row in enumerate(self.rows):
            t.add_row(*map(escape, row), *(self.cells[m][i] for m in metrics))
        return t


def aggregate_table(report: Any, title: str) -> AggregateTable:
    """The aggregated sweep table of a :class:`~perturbd.report.build.Report` (:class:`AggregateTable`)."""
    return AggregateTable(report, title)


def defense_table(reports: list[Any], title: str) -> Table:
    """One row per defence: kind, the matrix cell, clean images used, seconds."""
    t = Table(title=escape(title), header_style="bold")
    t.add_column("defense", min_width=_longest_word([r.name for r in reports]))  # a name is never cut, however narrow the terminal
    t.add_column("kind", min_width=_longest_word([r.kind for r in reports]))
    t.add_column("result", ratio=1)  # the one column that wraps to fit
    t.add_column("clean images", justify="right")
    t.add_column("seconds", justify="right")
    for r in reports:
        t.add_row(r.name, r.kind, r.cell["text"], str(r.clean_used), f"{r.seconds:.1f}")
    return t
