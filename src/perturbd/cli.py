"""The ``perturbd`` command: parse, load the config, call the library, print a rich summary.

Every :class:`~perturbd.errors.PerturbdError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from perturbd.config import load_config
from perturbd.errors import PerturbdError
from perturbd.report.console import RichMonitor, SweepMonitor, aggregate_table, defense_table, make_progress, pct, summary_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)
trigger_app = typer.Typer(no_args_is_help=True, help="Build and look at triggers.")
app.add_typer(trigger_app, name="trigger")
console = Console(stderr=True)
out_console = Console()

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: section.key=value (repeatable)")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="folder holding downloaded data sets (sets data.root)")]


def _overrides(sets: list[str] | None, data_root: Path | None) -> list[str]:
    out = list(sets or [])
    if data_root is not None:
        out.append(f"data.root={data_root}")
    return out


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (optional)")] = None,
    sets: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for run directories")] = Path("runs"),
    data_root: DataRootOpt = None,
    force: Annotated[bool, typer.Option("--force", help="redo a run whose directory already exists")] = False,
) -> None:
    """Run one experiment: poison, train the clean twin and the backdoored model, evaluate."""
    from perturbd.experiment import run as run_experiment

    cfg = load_config(config, _overrides(sets, data_root))
    with make_progress(console) as progress:
        result = run_experiment(cfg, out, monitor=RichMonitor(progress), log=lambda m: progress.console.print(f"[dim]{m}"), force=force)
    if result.skipped:
        console.print(f"[yellow]already complete, not rerun (use --force to redo): {result.run_dir}")
    out_console.print(summary_table(result.metrics, result.run_dir))


@app.command()
def datasets(data_root: DataRootOpt = None) -> None:
    """List the data sources and whether each is present."""
    from perturbd.config import DataConfig
    from perturbd.data import list_sources, source_status

    root = data_root or DataConfig().root
    t = Table(title=f"data sources (root {root})")
    t.add_column("name")
    t.add_column("status")
    for name in list_sources():
        t.add_row(name, source_status(name, Path(root).expanduser()))
    out_console.print(t)


@app.command()
def models() -> None:
    """List the registered model architectures."""
    from perturbd.models import list_models

    for name in list_models():
        out_console.print(name)
    out_console.print("tv:<name>  (any torchvision classification model, e.g. tv:resnet18)")


@trigger_app.command("list")
def trigger_list() -> None:
    """List the trigger kinds."""
    from perturbd.triggers import list_triggers

    for name in list_triggers():
        out_console.print(name)


@trigger_app.command("show")
def trigger_show(
    kind: Annotated[str, typer.Argument(help="trigger kind, e.g. grid")] = "grid",
    sets: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write")] = Path("trigger.png"),
    data: Annotated[str, typer.Option("--data", help="data set for the shape and the samples")] = "mnist5k",
    data_root: DataRootOpt = None,
) -> None:
    """Write a static trigger as a PNG (amplified) beside clean and poisoned samples."""
    from perturbd.data import load_data
    from perturbd.report.figures import trigger_sheet
    from perturbd.triggers import TriggerContext, build_trigger, needs_model

    cfg = load_config(None, [f"trigger.kind={kind}", f"data.name={data}", *_overrides(sets, data_root)])
    if needs_model(kind):
        raise PerturbdError(f"trigger '{kind}' is computed from a model; use `perturbd trigger make` to build it first")
    split = load_data(cfg.data, cfg.seed)
    trig = build_trigger(cfg.trigger, TriggerContext(split.test.image_shape, cfg.seed, cfg.poison.target))
    clean = split.test.images[:4]
    trigger_sheet(trig.delta, clean, trig.apply(clean), output, f"{kind}, c = {cfg.trigger.amplitude:g}")
    out_console.print(f"wrote {output}")


@trigger_app.command("make")
def trigger_make(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (optional)")] = None,
    sets: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".safetensors file to write (a .png and a .json beside it)")] = Path("trigger.safetensors"),
    data_root: DataRootOpt = None,
) -> None:
    """Build a trigger as the adversary would (adaptive by default) and save it; no victim is trained."""
    from perturbd.knowledge import make_trigger, write_trigger

    base = [] if config is not None else ["trigger.kind=adaptive"]
    cfg = load_config(config, [*base, *_overrides(sets, data_root)])
    with make_progress(console) as progress:
        plan = make_trigger(cfg, RichMonitor(progress), output)
    written = write_trigger(plan, output)
    t = Table(title=f"perturbd trigger make · {output}", header_style="bold")
    t.add_column("fact")
    t.add_column("value", justify="right")
    info, norms = plan.trigger.info, plan.trigger.norms()
    t.add_row("kind · knowledge", f"{plan.trigger.kind} · {cfg.attack.knowledge}")
    t.add_row("L∞ / L2 (0–255)", f"{norms['linf']:.0f} / {norms['l2']:.1f}")
    if "fooling_rate_samples" in info:
        t.add_row("method · norm · budget", f"{info['method']} · {info['norm']} · {info['budget']:g}")
        hold = info["fooling_rate_holdout"]
        t.add_row("fooling rate samples / held-out", f"{pct(info['fooling_rate_samples'])} / {pct(hold) if hold is not None else '–'}")
        t.add_row("passes · seconds", f"{info['passes_used']} · {info['seconds']:.1f} s")
        m = plan.info["model"]
        t.add_row("adversary model", f"{m['arch']}{' (surrogate)' if m['surrogate'] else ''}, held-out accuracy {pct(m['holdout_accuracy'])}")
    t.add_row("files", ", ".join(str(p) for p in written))
    out_console.print(t)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep YAML: base config, axes, seeds, executor, out")],
    sets: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for the run directories (overrides out:)")] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", "-e", help="local or ray (overrides executor:)")] = None,
    workers: Annotated[Optional[str], typer.Option("--workers", "-w", help="local runs at once: auto or N (1 = in this process)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and their state; run nothing")] = False,
) -> None:
    """Run a grid of experiments × seeds; finished runs are kept and never rerun, failed ones retried."""
    from perturbd.report.build import build_report
    from perturbd.sweep import load_sweep, made_elsewhere_runs, run_dir, run_sweep, status

    sw = load_sweep(spec, {"out": str(out) if out else None, "executor": executor, "workers": int(workers) if workers and workers.isdigit() else workers}, sets)
    st = status(sw)
    console.print(
        f"sweep [bold]{sw.spec.name}[/]: {len(sw.runs)} runs ({len(sw.runs) // len(sw.spec.seeds)} configs × {len(sw.spec.seeds)} seeds) → {sw.out}\n"
        f"  {len(st.done)} already done, {len(st.failed)} failed before (retried), {len(st.pending)} to run · executor {sw.spec.executor}",
        highlight=False,
    )
    stale = made_elsewhere_runs(sw, st)
    if stale:
        console.print(
            f"[yellow]  {len(stale)} of the finished runs were made by another perturbd version or commit (e.g. {stale[0].name}); "
            "they are kept, not rerun: delete them to redo them with this code",
            highlight=False,
        )
    if dry_run:
        state = {c.hash(): "done" for c in st.done} | {c.hash(): "failed" for c in st.failed}
        for cfg, assigned in zip(sw.runs, sw.assignments):
            out_console.print(f"{state.get(cfg.hash(), 'todo'):>6}  {run_dir(cfg, sw.out).name}  " + " ".join(f"{k}={v}" for k, v in assigned.items()), highlight=False)
        return
    with make_progress(console) as progress:
        overall = progress.add_task("sweep", total=len(sw.runs), completed=len(st.done), info="")
        in_process = sw.spec.executor == "local"

        def on_done(o: Any) -> None:
            progress.advance(overall)
            if o.ok:
                m = o.metrics
                progress.console.print(f"[green]✓[/] {o.run_dir.name}  ASR {pct(m['attack_success_rate'])} · clean acc {pct(m['clean_accuracy'])} · {o.seconds:.0f} s", highlight=False)
            else:
                progress.console.print(f"[red]✗[/] {o.cfg.run_name}-{o.cfg.hash()}: {o.error}", highlight=False)

        def on_start(cfg: Any) -> None:
            progress.update(overall, info=f"{cfg.run_name}-{cfg.hash()} seed {cfg.seed}")

        result = run_sweep(sw, on_start=on_start, on_done=on_done, monitor=SweepMonitor(progress) if in_process else None)
    console.print(f"ran {len(result.finished)} runs in {result.seconds:.0f} s; {len(result.failed)} failed", highlight=False)
    report = build_report(sw.out)
    out_console.print(aggregate_table(report, f"{sw.spec.name}: mean ± 95 % CI over seeds"))
    console.print(f"report: {report.html}", highlight=False)
    if result.failed:
        console.print(f"[red]{len(result.failed)} runs failed[/] (see {sw.out / 'failures'}); rerun the same command to retry them", highlight=False)
        raise typer.Exit(1)


@app.command()
def report(path: Annotated[Path, typer.Argument(help="a run directory, or a folder of runs (searched recursively)")] = Path("runs")) -> None:
    """Write report.html (and for a folder: aggregate.csv/.md, runs.csv, figures/) and print the table."""
    from perturbd.report.build import build_report

    rep = build_report(path)
    if rep.single_run:
        out_console.print(summary_table(rep.records[0].metrics, rep.root))
    else:
        out_console.print(aggregate_table(rep, f"{rep.root}: {len(rep.records)} runs, mean ± 95 % CI over seeds"))
        for f in rep.files[:-1]:
            console.print(f"wrote {f}", highlight=False)
    console.print(f"report: {rep.html}", highlight=False)


ParamOpt = Annotated[Optional[list[str]], typer.Option("--param", "-p", help="a defence parameter: key=value (repeatable)")]


def _params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML; a one-line error for anything else."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PerturbdError(f"--param takes key=value, got '{item}'")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


@app.command()
def defend(
    model: Annotated[Path, typer.Argument(help="a run directory, or a model .safetensors")],
    defense: Annotated[list[str], typer.Option("--defense", "-d", help="defence name (repeatable); see `perturbd defenses`")],
    data: Annotated[Optional[str], typer.Option("--data", help="data set the model was trained on (default: the run's)")] = None,
    trigger: Annotated[Optional[Path], typer.Option("--trigger", help="trigger .safetensors, to measure ASR / input screening")] = None,
    target: Annotated[Optional[int], typer.Option("--target", help="the attack's target label")] = None,
    params: ParamOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for defenses.json, figures and matrix (default: ./defend-<model>)")] = None,
    data_root: DataRootOpt = None,
) -> None:
    """Run defences on a saved model; --param applies to every --defense given."""
    from perturbd.config import DefenseSpec
    from perturbd.defenses.evaluate import run_defenses, write_defenses
    from perturbd.defenses.saved import load_inputs

    specs = [DefenseSpec(name=name, params=_params(params)) for name in defense]
    inputs = load_inputs(model, data=data, data_root=data_root, trigger=trigger, target=target)
    reports = run_defenses(specs, inputs, log=lambda m: console.print(f"[dim]{m}"))
    folder = out or Path(f"defend-{model.stem if model.is_file() else model.name}")
    folder.mkdir(parents=True, exist_ok=True)
    write_defenses(folder, reports, inputs.clean_source)
    out_console.print(defense_table(reports, f"perturbd defend · {model}"))
    console.print(f"wrote {folder}/defenses.json")


@app.command()
def defenses(pattern: Annotated[str, typer.Argument(help="shell-style filter")] = "*") -> None:
    """List the registered defences and their kind."""
    from perturbd.defenses import get_defense, list_defenses

    for name in list_defenses(pattern):
        out_console.print(f"{name:<22} {get_defense(name).kind}")


@app.command()
def audit(
    old: Annotated[Path, typer.Argument(help="model before the update: .safetensors or run directory")],
    new: Annotated[Path, typer.Argument(help="model after the update: .safetensors or run directory")],
    data: Annotated[Optional[str], typer.Option("--data", help="clean data the models classify (default: NEW's run config)")] = None,
    params: ParamOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for audit.json and figures")] = None,
    data_root: DataRootOpt = None,
) -> None:
    """Audit an update: a verdict per label (exit 0 either way; 2 for a user mistake)."""
    from perturbd.audit import NO_CHANGE, audit_update
    from perturbd.defenses.saved import load_inputs, locate
    from perturbd.models import build_from_checkpoint

    inputs = load_inputs(new, data=data, data_root=data_root)
    old_model = build_from_checkpoint(locate(old).model)
    with console.status("auditing the update (Neural Cleanse and universal perturbations on both models)"):
        result = audit_update(old_model, inputs.model, inputs.clean, **_params(params))
    t = Table(title=f"perturbd audit · {old} → {new}", header_style="bold")
    for col in ("label", "verdict", "NC index old → new", "mask L1 old → new", "UAP fooling old → new"):
        t.add_column(col)
    for r in result.rows:
        style = "" if r["verdict"] == NO_CHANGE else "bold red"
        t.add_row(
            str(r["label"]), f"[{style}]{r['verdict']}" if style else r["verdict"],
            f"{r['nc_anomaly_index_old']:.2f} → {r['nc_anomaly_index_new']:.2f}",
            f"{r['nc_mask_l1_old']:.1f} → {r['nc_mask_l1_new']:.1f}",
            f"{100 * r['fooling_rate_old']:.1f} → {100 * r['fooling_rate_new']:.1f} %",
        )  # fmt: skip
    out_console.print(t)
    out_console.print(f"suspicious labels: {result.suspicious or 'none'} ({result.clean_used} clean images, {result.seconds:.1f} s)")
    if out is not None:
        from perturbd.defenses.figures import recovered_trigger_png
        from perturbd.rundir import write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "audit.json", result.to_json())
        for label in result.suspicious:
            mask, pattern = result.nc_new.trigger_of(label)  # type: ignore[union-attr]
            recovered_trigger_png(mask, pattern, out / f"audit_trigger_{label}.png", f"NEW model, label {label}")


def main() -> None:
    """Console entry point: one line and exit code 2 for every user mistake."""
    try:
        app()
    except PerturbdError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished runs are kept, partial ones were removed")
        sys.exit(130)

