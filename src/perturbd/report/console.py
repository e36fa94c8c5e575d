"""Rich displays for the CLI: training progress and the summary tables of runs, sweeps and defences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from perturbd.progress import LineMonitor
from perturbd.report.aggregate import TABLE_METRICS, cell, seed_span
from perturbd.runs.results import METRICS, REMOVAL, REMOVAL_KINDS, RunMetrics, pct

__all__ = ["AggregateTable", "RichMonitor", "SweepMonitor", "aggregate_table", "defense_table", "make_progress", "pct", "summary_table"]


class RichMonitor:
    """Progress as rich bars, one per stage (:class:`~perturbd.progress.Monitor`): description,
    bar, steps done, the last epoch's loss and images per second, time elapsed. A stage inside
    another is drawn indented under it and taken off the display when it ends.

    Where the display is off (not a terminal: see :func:`make_progress`), progress goes to the
    console as lines of text instead (:class:`~perturbd.progress.LineMonitor`: start, end and at
    most one line every ``every`` seconds, with the time left)."""

    def __init__(self, progress: Progress, *, every: float = 10.0) -> None:
        self.progress = progress
        self.lines = LineMonitor(self._print, every=every) if progress.disable else None
        self.tasks: list[TaskID] = []

    def _print(self, line: str) -> None:
        self.progress.console.print(escape(line), highlight=False, soft_wrap=True)

    def start(self, description: str, total_steps: int) -> None:
        if self.lines is not None:
            self.lines.start(description, total_steps)
            return
        self.tasks.append(self._task(len(self.tasks), description, total_steps))

    def _task(self, depth: int, description: str, total_steps: int) -> TaskID:
        """A bar for a stage ``depth`` stages deep."""
        return self.progress.add_task(escape("  " * depth + description), total=total_steps, info="")

    def step(self, images: int) -> None:
        if self.lines is not None:
            self.lines.step(images)
        elif self.tasks:
            self.progress.advance(self.tasks[-1])

    def epoch(self, epoch: int, loss: float, images_per_s: float) -> None:
        if self.lines is not None:
            self.lines.epoch(epoch, loss, images_per_s)
        elif self.tasks:
            self.progress.update(self.tasks[-1], info=f"epoch {epoch} · loss {loss:.3f} · {images_per_s:,.0f} img/s")

    def note(self, text: str) -> None:
        """Show ``text`` beside the innermost stage's bar (on a terminal only: e.g. the run a sweep is at)."""
        if self.lines is None and self.tasks:
            self.progress.update(self.tasks[-1], info=escape(text))

    def stop(self) -> None:
        if self.lines is not None:
            self.lines.stop()
        elif self.tasks:
            self._done(self.tasks.pop())

    def _done(self, task: TaskID) -> None:
        """A stage ended: its bar full; an inner stage's bar taken off (its outer stage goes on)."""
        if self.tasks:
            self.progress.remove_task(task)
        else:
            self.progress.update(task, completed=self.progress.tasks[self._index(task)].total)

    def _index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task)


def make_progress(console: Console) -> Progress:
    """The training progress display: description, bar, steps, epoch info, elapsed time.

    Off where ``console`` is not a terminal (a log file, a pipe): a live display is drawn there
    only once, when it stops; the monitors (:class:`RichMonitor`) write lines of text instead.
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
    """The bars of an in-process sweep: one per depth of stage, reused by every run (the sweep's
    own bar, then each run's trainings on the one below, and so on), so that a sweep of many runs
    keeps a display of a few lines."""

    def __init__(self, progress: Progress, *, every: float = 10.0) -> None:
        super().__init__(progress, every=every)
        self.slots: list[TaskID] = []

    def _task(self, depth: int, description: str, total_steps: int) -> TaskID:
        if depth < len(self.slots):
            self.progress.reset(self.slots[depth], total=total_steps, description=escape("  " * depth + description), info="")
            return self.slots[depth]
        self.slots.append(super()._task(depth, description, total_steps))
        return self.slots[-1]

    def _done(self, task: TaskID) -> None:
        self.progress.update(task, completed=self.progress.tasks[self._index(task)].total)


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


#: the removal metrics the console's defence table gives a column each, when a mitigation ran
REMOVAL_COLUMNS = ("asr_after", "robust_accuracy_after", "accuracy_cost", "der")


def defense_table(reports: list[Any], title: str) -> Table:
    """One row per defence: kind, the matrix cell, clean images used, seconds; when a mitigation
    ran, its ASR after, R-Acc, accuracy cost and DER too (labels and formats:
    :data:`~perturbd.runs.results.REMOVAL`; the seconds are the whole evaluation's, the fit's own
    are in ``defenses.json``)."""
    removal = [c for c in REMOVAL_COLUMNS if any(c in r.metrics for r in reports)]
    t = Table(title=escape(title), header_style="bold")
    t.add_column("defense", min_width=_longest_word([r.name for r in reports]))  # a name is never cut, however narrow the terminal
    t.add_column("kind", min_width=_longest_word([r.kind for r in reports]))
    t.add_column("result", ratio=1)  # the one column that wraps to fit
    for c in removal:
        t.add_column(escape(REMOVAL[c].label), justify="right")
    t.add_column("clean images", justify="right")
    t.add_column("seconds", justify="right")
    for r in reports:
        numbers = [REMOVAL[c].text(r.metrics.get(c)) if r.kind in REMOVAL_KINDS else "" for c in removal]
        t.add_row(escape(r.name), r.kind, escape(r.cell["text"]), *numbers, str(r.clean_used), f"{r.seconds:.1f}")
    return t
