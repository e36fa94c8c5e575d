"""Commands that run experiments and read their results: ``run``, ``reproduce``, ``sweep``, ``report``, ``datasets``, ``models``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from perturbd.cli.app import DataRootOpt, SetOpt, TensorBoardOpt, TrustCodeOpt, app, console, out_console, overrides, with_tensorboard
from perturbd.config import load_config
from perturbd.errors import ConfigError
from perturbd.progress import stage, watching
from perturbd.report.aggregate import interval_note, report_root
from perturbd.report.console import RichMonitor, SweepMonitor, aggregate_table, make_progress, pct, summary_table
from perturbd.runs.rundir import run_dir_for
from perturbd.sweep.config import read_sweep


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (optional)")] = None,
    sets: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for run directories")] = Path("runs"),
    data_root: DataRootOpt = None,
    force: Annotated[bool, typer.Option("--force", help="redo a run whose directory already exists")] = False,
    tensorboard: TensorBoardOpt = None,
) -> None:
    """Run one experiment: poison, train the clean twin and the backdoored model, evaluate."""
    cfg = load_config(config, overrides(sets, data_root))  # a config mistake is answered before torch loads
    from perturbd.process import tune_process
    from perturbd.runs.experiment import run as run_experiment

    tune_process(cfg.train.threads)  # the command is the entry point: the library never retunes the process
    with make_progress(console) as progress, with_tensorboard(RichMonitor(progress), tensorboard, run_dir_for(cfg, out).name) as monitor:
        result = run_experiment(cfg, out, monitor=monitor, log=lambda m: progress.console.print(f"[dim]{escape(m)}"), force=force)
    if result.skipped:
        console.print(f"[yellow]already complete, not rerun (use --force to redo): {escape(str(result.run_dir))}", highlight=False)
    out_console.print(summary_table(result.metrics, result.run_dir))


@app.command()
def reproduce(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `perturbd run` or `perturbd sweep`")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for the retrain (default: ./reproduce-<run>)")] = None,
    restore: Annotated[
        bool, typer.Option("--restore", help="if it reproduces, move the retrain's weights into the run (one kept without them)")
    ] = False,
    data_root: DataRootOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Train a finished run again from its config.yaml with this code and compare its numbers bit
    for bit: exit 0 if they are the same, 1 if not."""
    from perturbd.runs.folder import RunDir

    given = overrides(None, data_root)
    stored = RunDir(run_dir)
    cfg = stored.config(given, trust_code=trust_code)  # a mistake is answered before torch loads
    note = stored.hash_note()
    if note:
        console.print(f"[yellow]{escape(note)}", highlight=False)
    from perturbd.process import tune_process
    from perturbd.runs.reproduce import REPRODUCED
    from perturbd.runs.reproduce import reproduce as train_again
    from perturbd.runs.reproduce import restore as put_back

    tune_process(cfg.train.threads)

    with make_progress(console) as progress:
        rep = train_again(run_dir, out or Path(f"reproduce-{run_dir.name}"), overrides=given, monitor=RichMonitor(progress),
                          log=lambda m: progress.console.print(f"[dim]{escape(m)}"), trust_code=trust_code)  # fmt: skip
    t = Table(title=f"perturbd reproduce · {escape(str(run_dir))}")
    for column in ("number", "stored", "retrained", ""):
        t.add_column(column)
    for key in REPRODUCED:
        t.add_row(key, str(rep.stored.get(key)), str(rep.retrained.get(key)), "same" if key not in rep.differ else "[red]differs")
    out_console.print(t)
    for note in rep.notes:
        console.print(f"[yellow]{escape(note)}", highlight=False)
    console.print(escape(rep.summary()), highlight=False)
    if not rep.same:
        console.print(escape(f"the retrain is kept in {rep.again}" + ("; weights not restored" if restore else "")), highlight=False)
        raise typer.Exit(1)
    if restore and stored.has_weights():
        console.print(escape(f"{run_dir} has its weights; nothing restored (the retrain is in {rep.again})"), highlight=False)
    elif restore:
        put_back(rep)
        console.print(escape(f"weights put into {run_dir}: {', '.join(RunDir.WEIGHTS)}"), highlight=False)
    else:
        console.print(escape(f"the retrain is in {rep.again}"), highlight=False)


@app.command()
def datasets(data_root: DataRootOpt = None) -> None:
    """List the data sources and whether each is present."""
    from perturbd.config import DataConfig
    from perturbd.data import list_sources, source_status

    root = data_root or DataConfig().root
    t = Table(title=escape(f"data sources (root {root})"))
    t.add_column("name")
    t.add_column("status")
    for name in list_sources():
        t.add_row(name, escape(source_status(name, Path(root).expanduser())))
    out_console.print(t)


@app.command()
def models() -> None:
    """List the registered model architectures."""
    from perturbd.models import list_models

    for name in list_models():
        out_console.print(name, markup=False)
    out_console.print("tv:<name>  (any torchvision classification model, e.g. tv:resnet18; model.weights=PATH: pretrained or your weights)")
    out_console.print("torchscript:PATH  (a torch.jit.save file)")
    out_console.print("factory:package.module:function  (your code, returning a fresh nn.Module)")


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep YAML: base config, axes, seeds, executor, out")],
    sets: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for the run directories (overrides out:)")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", "-e", help="local or ray (overrides executor:)")] = None,
    workers: Annotated[Optional[str], typer.Option("--workers", "-w", help="local runs at once: auto or N (1 = in this process)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and their state; run nothing")] = False,
    tensorboard: TensorBoardOpt = None,
    max_runs: Annotated[
        Optional[int], typer.Option("--max-runs", help="allow a sweep of up to N runs (overrides max_runs:, default 10,000)")
    ] = None,
) -> None:
    """Run a grid of experiments × seeds; finished runs are kept and never rerun, failed ones retried."""
    wanted = {
        "out": str(out) if out else None,
        "executor": executor,
        "workers": int(workers) if workers and workers.isdigit() else workers,
        "max_runs": max_runs,
    }
    if tensorboard is not None and workers is None:
        wanted["workers"] = 1  # TensorBoard sees the runs trained in this process
    sw = read_sweep(spec, wanted, sets)  # a mistake in the sweep file is answered before torch loads
    if tensorboard is not None and (sw.spec.executor != "local" or sw.spec.workers != 1):
        raise ConfigError("--tensorboard logs the runs trained in this process; use it with --executor local --workers 1")
    from perturbd.report.build import build_report
    from perturbd.sweep.executors import busy_warning
    from perturbd.sweep.runner import check_sweep, made_elsewhere_runs, run_sweep, status

    check_sweep(sw)
    st = status(sw)
    console.print(
        f"sweep [bold]{escape(str(sw.spec.name))}[/]: {len(sw.runs)} runs "
        f"({len(sw.runs) // len(sw.spec.seeds)} configs × {len(sw.spec.seeds)} seeds) "
        f"→ {escape(str(sw.out))}\n"
        f"  {len(st.done)} already done, {len(st.failed)} failed before (retried), {len(st.pending)} to run · executor {sw.spec.executor}",
        highlight=False,
    )
    busy = busy_warning()
    if busy and st.todo:
        console.print(f"[yellow]  {escape(str(busy))}", highlight=False)
    stale = made_elsewhere_runs(sw, st)
    if stale:
        console.print(
            f"[yellow]  {len(stale)} of the finished runs were made by another perturbd version or commit (e.g. {escape(stale[0].name)}); "
            "they are kept, not rerun: delete them to redo them with this code",
            highlight=False,
        )
    if dry_run:
        state = {c.hash(): "done" for c in st.done} | {c.hash(): "failed" for c in st.failed}
        for cfg, assigned in zip(sw.runs, sw.assignments):
            out_console.print(
                f"{state.get(cfg.hash(), 'todo'):>6}  {run_dir_for(cfg, sw.out).name}  "
                + " ".join(f"{k}={v}" for k, v in assigned.items()),
                highlight=False,
                markup=False,
            )
        return
    progress = make_progress(console)
    bars = SweepMonitor(progress)  # the sweep's bar, and below it the bars of the runs trained in this process
    with progress, with_tensorboard(bars, tensorboard) as monitor, watching(monitor), stage("sweep", st.todo, monitor) as overall:
        in_process = sw.spec.executor == "local"

        def on_done(o: Any) -> None:
            overall.advance()
            if o.ok:
                m = o.metrics
                progress.console.print(
                    f"[green]✓[/] {escape(o.run_dir.name)}  ASR {pct(m.attack_success_rate)} · clean acc {pct(m.clean_accuracy)} "
                    f"· {o.seconds:.0f} s",
                    highlight=False,
                )
            else:
                progress.console.print(f"[red]✗[/] {escape(f'{o.cfg.run_name}-{o.cfg.hash()}: {o.error}')}", highlight=False)

        def on_start(cfg: Any) -> None:
            bars.note(f"{cfg.run_name}-{cfg.hash()} seed {cfg.seed}")
            if tensorboard is not None:
                monitor.run = run_dir_for(cfg, sw.out).name

        result = run_sweep(sw, on_start=on_start, on_done=on_done, monitor=monitor if in_process else None)
    console.print(f"ran {len(result.finished)} runs in {result.seconds:.0f} s; {len(result.failed)} failed", highlight=False)
    report = build_report(sw.out)
    out_console.print(aggregate_table(report, f"{sw.spec.name}: {interval_note(report.groups)}"))
    for line in report.warnings:
        console.print(f"[yellow]warning: {escape(line)}", highlight=False)
    console.print(escape(f"report: {report.html}"), highlight=False)
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} runs failed[/] (see {escape(str(sw.out / 'failures'))}); rerun the same command to retry them",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a run directory, or a folder of runs (searched recursively)")] = Path("runs"),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for the report files (default: beside the runs)")] = None,
    pivot: Annotated[
        Optional[str],
        typer.Option(
            "--pivot", help="a config key that varies (e.g. poison.rate): also write pivot_KEY.md, ASR with its values as columns"
        ),
    ] = None,
) -> None:
    """Write report.html (and for a folder: aggregate.csv/.md, runs.csv, figures/) and print the table."""
    report_root(path)  # a wrong folder is answered before the plotting libraries load
    from perturbd.report.build import build_report
    from perturbd.runs.folder import RunDir
    from perturbd.runs.rundir import check_output, user_os_errors

    if out is not None:
        check_output(out, "--out")
    with user_os_errors(out or path):
        rep = build_report(path, out, pivot)
    if rep.single_run:
        out_console.print(summary_table(RunDir(rep.root).metrics(), rep.root))
    else:
        out_console.print(aggregate_table(rep, f"{rep.root}: {len(rep.records)} runs, {interval_note(rep.groups)}"))
        for f in rep.files[:-1]:
            console.print(escape(f"wrote {f}"), highlight=False)
        for line in rep.warnings:
            console.print(f"[yellow]warning: {escape(line)}", highlight=False)
    console.print(escape(f"report: {rep.html}"), highlight=False)
