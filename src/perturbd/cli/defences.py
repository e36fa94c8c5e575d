"""Commands that defend and audit saved models: ``defend``, ``defenses``, ``audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from perturbd.cli.app import DataRootOpt, ParamOpt, TrustCodeOpt, app, console, defense_params, out_console
from perturbd.cli.catalog import defense_entries, listing
from perturbd.errors import ConfigError, DataError
from perturbd.report.console import RichMonitor, defense_table, make_progress

ArchOpt = Annotated[
    Optional[str],
    typer.Option(
        "--arch", help="architecture of a state dict (.safetensors/.pt/.pth): tv:NAME or factory:package.module:function (sets model.name)"
    ),
]
FeaturesOpt = Annotated[
    Optional[str], typer.Option("--features", help="layer whose output dataset screening reads, e.g. layer4 (sets model.features)")
]
ModelSetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="a key of the model section: model.KEY=VALUE, e.g. model.mean=[0.485,0.456,0.406] (repeatable)"),
]


def model_options(arch: str | None, features: str | None, sets: list[str] | None) -> dict[str, Any]:
    """The model-section keys ``--arch``, ``--features`` and ``--set model.KEY=VALUE`` give."""
    from perturbd.config import apply_overrides

    given = apply_overrides({}, list(sets or []))
    other = [k for k in given if k != "model"]
    if other:
        raise ConfigError(f"--set here takes model.KEY=VALUE (the model section), got '{other[0]}'")
    return {**given.get("model", {}), **({"name": arch} if arch else {}), **({"features": features} if features else {})}


@app.command()
def defend(
    model: Annotated[Path, typer.Argument(help="a run directory, or a model file: perturbd's, TorchScript, or a state dict with --arch")],
    defense: Annotated[list[str], typer.Option("--defense", "-d", help="defence name (repeatable); see `perturbd defenses`")],
    data: Annotated[Optional[str], typer.Option("--data", help="data set the model was trained on (default: the run's)")] = None,
    trigger: Annotated[Optional[Path], typer.Option("--trigger", help="trigger .safetensors, to measure ASR / input screening")] = None,
    target: Annotated[Optional[int], typer.Option("--target", help="the attack's target label")] = None,
    source: Annotated[
        Optional[list[int]],
        typer.Option(
            "--source", help="a source class of a source-specific attack (repeatable; default: the run's poison.sources, else all)"
        ),
    ] = None,
    params: ParamOpt = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="folder for defenses.json and figures (default: the run directory itself, else ./defend-<model>)"),
    ] = None,
    rerun: Annotated[
        bool,
        typer.Option(
            "--rerun",
            "--replace",
            help="run a defence again when defenses.json already holds it with the same parameters, replacing that entry",
        ),
    ] = False,
    data_root: DataRootOpt = None,
    arch: ArchOpt = None,
    features: FeaturesOpt = None,
    sets: ModelSetOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Run defences on a saved model (a run directory, a perturbd or TorchScript file, or a state dict
    with --arch); -p NAME.KEY=VALUE sets a parameter of one defence (-p KEY=VALUE: of every --defense
    given). Every ASR reported counts the source classes only (--source, or the run's poison.sources).
    Results accumulate in the folder's defenses.json, one entry per defence and parameters (a run
    directory's shows in its report.html): a defence already there with the same parameters is
    skipped unless --rerun."""
    from perturbd.config import DefenseSpec
    from perturbd.evaluation.harness import read_record, run_defenses, write_defenses
    from perturbd.evaluation.record import entries
    from perturbd.malloc import tune_malloc
    from perturbd.progress import watching
    from perturbd.report.matrix import matrix_rows, write_matrix
    from perturbd.runs.folder import RunDir
    from perturbd.runs.rundir import check_output, user_os_errors
    from perturbd.runs.saved import load_inputs

    given = defense_params(defense, params)  # a bad name, key or value: one line, before anything loads
    specs = [DefenseSpec(name=name, params=given[name]) for name in defense]
    run = RunDir(model)
    folder = check_output(out or (run.path if run.is_run() else Path(f"defend-{model.stem if model.is_file() else model.name}")), "--out")
    earlier = read_record(folder)  # a file there that is not a record stops here, before any work
    tune_malloc()  # the command is the entry point: glibc's malloc set for tensors
    inputs = load_inputs(
        model,
        data=data,
        data_root=data_root,
        trigger=trigger,
        target=target,
        model=model_options(arch, features, sets),
        trust_code=trust_code,
        sources=source or None,
    )
    done = [] if rerun or earlier is None else entries(earlier)
    with make_progress(console) as progress, watching(RichMonitor(progress)):
        reports = run_defenses(specs, inputs, log=lambda m: progress.console.print(f"[dim]{escape(m)}"), done=done)
    if not reports:
        console.print(escape(f"nothing new: {RunDir(folder).defenses_path} holds every defence asked for (--rerun runs them again)"))
        return
    with user_os_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        write_defenses(folder, reports, inputs.clean_source)
        if RunDir(folder).is_run():  # the run's one-row matrix, with every defence it now holds
            try:
                write_matrix(matrix_rows([folder]), folder)
            except DataError as err:  # a run of another version: its metrics do not read as today's
                console.print(escape(f"matrix not rewritten: {err}"), highlight=False)
    out_console.print(defense_table(reports, f"perturbd defend · {escape(str(model))}"))
    console.print(escape(f"wrote {RunDir(folder).defenses_path}"), highlight=False)


@app.command()
def defenses(pattern: Annotated[str, typer.Argument(help="shell-style filter, e.g. 'fine_*'")] = "*") -> None:
    """List the defences: name, kind, what it is, and each parameter as `-p NAME.KEY=DEFAULT`
    with its type, range and meaning (no torch is loaded to list them)."""
    entries = defense_entries(pattern)
    if not entries:
        raise ConfigError(f"no defence matches '{pattern}'; see `perturbd defenses`")
    for line in listing(entries, "", out_console.width):
        out_console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def audit(
    old: Annotated[Path, typer.Argument(help="model before the update: a model file or run directory")],
    new: Annotated[Path, typer.Argument(help="model after the update: a model file or run directory")],
    data: Annotated[Optional[str], typer.Option("--data", help="clean data the models classify (default: NEW's run config)")] = None,
    params: ParamOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for audit.json and figures (default: ./audit-<new>)")] = None,
    data_root: DataRootOpt = None,
    arch: ArchOpt = None,
    features: FeaturesOpt = None,
    sets: ModelSetOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Audit an update: a verdict per label (exit 0 either way; 2 for a user mistake). Its
    audit.json and figures are saved in --out (default: ./audit-<new>)."""
    from perturbd.defenses.base import seed_from_run
    from perturbd.defenses.update_audit import NO_CHANGE, UpdateAudit
    from perturbd.malloc import tune_malloc
    from perturbd.progress import watching
    from perturbd.runs.rundir import check_output, user_os_errors, write_json
    from perturbd.runs.saved import load_inputs, load_model, locate

    auditor = UpdateAudit(**defense_params([UpdateAudit.name], params)[UpdateAudit.name])
    folder = check_output(out or Path(f"audit-{new.stem if new.is_file() else new.name}"), "--out")
    spec = model_options(arch, features, sets)
    before = locate(old, trust_code=trust_code, model=spec)  # both models' files are checked before anything loads
    tune_malloc()
    inputs = load_inputs(new, data=data, data_root=data_root, model=spec, trust_code=trust_code)
    old_model = load_model(before, inputs.clean, spec)
    seed_from_run(auditor, inputs.seed)
    with make_progress(console) as progress, watching(RichMonitor(progress)):
        result = auditor.fit(inputs.model, inputs.clean, before=old_model)
    with user_os_errors(folder):  # saved before anything is printed: the work is kept even if the output is cut
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "audit.json", result.to_json())
        for filename, draw in result.figures().items():
            draw(folder / filename)
    t = Table(title=escape(f"perturbd audit · {old} → {new}"), header_style="bold")
    for col in ("label", "verdict", "NC index old → new", "mask L1 old → new", "UAP fooling old → new"):
        t.add_column(col)
    for r in result.rows_:
        style = "" if r["verdict"] == NO_CHANGE else "bold red"
        t.add_row(
            str(r["label"]), f"[{style}]{r['verdict']}" if style else r["verdict"],
            f"{r['nc_anomaly_index_old']:.2f} → {r['nc_anomaly_index_new']:.2f}",
            f"{r['nc_mask_l1_old']:.1f} → {r['nc_mask_l1_new']:.1f}",
            f"{100 * r['fooling_rate_old']:.1f} → {100 * r['fooling_rate_new']:.1f} %",
        )  # fmt: skip
    out_console.print(t)
    out_console.print(
        f"suspicious labels: {result.suspicious_labels_ or 'none'} ({result.clean_used_} clean images, {result.seconds_:.1f} s)"
    )
    console.print(escape(f"wrote {folder / 'audit.json'}"), highlight=False)
