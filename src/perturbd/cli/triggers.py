"""``perturbd trigger list | show | make``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from perturbd.cli.app import DataRootOpt, SetOpt, console, out_console, overrides, trigger_app
from perturbd.cli.catalog import listing, trigger_entries
from perturbd.config import load_config
from perturbd.errors import PerturbdError
from perturbd.report.console import RichMonitor, make_progress, pct
from perturbd.runs.folder import RunDir  # the defaults are named as a run folder names its trigger

#: the figure formats ``trigger show -o`` writes (matplotlib's, by the file's suffix)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps")


def _check_output_file(output: Path, suffixes: tuple[str, ...] = ()) -> None:
    """Before any work: ``-o`` names a file of a format written here, in a folder that can be written."""
    from perturbd.runs.rundir import check_output

    if suffixes and output.suffix.lower() not in suffixes:
        raise PerturbdError(f"-o {output}: cannot write a '{output.suffix or 'suffixless'}' file; give a {' or '.join(suffixes[:3])} file")
    if output.is_dir():
        raise PerturbdError(f"-o {output} is a folder; give a file name")
    check_output(output.parent, "-o", output.name)


@trigger_app.command("list")
def trigger_list(pattern: Annotated[str, typer.Argument(help="shell-style filter, e.g. 'sig*'")] = "*") -> None:
    """List the trigger kinds: name, fixed or computed from a model, what it is, and each
    parameter as `trigger.KEY=DEFAULT` with its type, range and meaning (no torch is loaded)."""
    entries = trigger_entries(pattern)
    if not entries:
        raise PerturbdError(f"no trigger kind matches '{pattern}'; see `perturbd trigger list`")
    for line in listing(entries, "trigger", out_console.width):
        out_console.print(line, markup=False, highlight=False, soft_wrap=True)


@trigger_app.command("show")
def trigger_show(
    kind: Annotated[str, typer.Argument(help="trigger kind, e.g. grid")] = "grid",
    sets: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write")] = Path(RunDir.TRIGGER_PNG),
    data: Annotated[str, typer.Option("--data", help="data set for the shape and the samples")] = "mnist5k",
    data_root: DataRootOpt = None,
) -> None:
    """Write a trigger that needs no model as a PNG (amplified; a non-additive one: its mean change
    to the samples) beside clean and poisoned samples."""
    from perturbd.data import load_data
    from perturbd.report.figures import trigger_sheet
    from perturbd.runs.rundir import user_os_errors
    from perturbd.triggers import TriggerContext, build_trigger, needs_model

    cfg = load_config(None, [f"trigger.kind={kind}", f"data.name={data}", *overrides(sets, data_root)])
    if needs_model(kind):
        raise PerturbdError(f"trigger '{kind}' is computed from a model; use `perturbd trigger make` to build it first")
    _check_output_file(output, FIGURE_SUFFIXES)
    split = load_data(cfg.data, cfg.seed)
    trig = build_trigger(cfg.trigger, TriggerContext(split.test.image_shape, cfg.seed, cfg.poison.target, quantize=cfg.poison.quantize))
    clean = split.test.images[:4]
    with user_os_errors(output):
        trigger_sheet(trig.preview(clean), clean, trig.apply(clean), output, cfg.trigger.label, trig.norms(clean.shape[1], clean)["linf"])
    out_console.print(f"wrote {output}", markup=False, highlight=False)


@trigger_app.command("make")
def trigger_make(
    config: Annotated[Optional[Path], typer.Argument(help="experiment YAML (optional)")] = None,
    sets: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help=".safetensors file to write (a .png and a .json beside it)")] = Path(
        RunDir.TRIGGER
    ),
    data_root: DataRootOpt = None,
) -> None:
    """Build a trigger as the adversary would (adaptive by default) and save it; no victim is trained."""
    base = [] if config is not None else ["trigger.kind=adaptive"]
    cfg = load_config(config, [*base, *overrides(sets, data_root)])  # a config mistake is answered before torch loads
    _check_output_file(output)  # its suffix: make_trigger checks it
    from perturbd.attack.trigger_file import make_trigger, write_trigger
    from perturbd.process import tune_process
    from perturbd.runs.rundir import user_os_errors

    tune_process(cfg.train.threads)

    with make_progress(console) as progress:
        plan = make_trigger(cfg, RichMonitor(progress), output)
    samples = None
    if not plan.trigger.additive:  # its picture and norms are measured on images: the test set's first
        from perturbd.data import load_data

        samples = load_data(cfg.data, cfg.seed).test.images[:256]
    with user_os_errors(output):
        written = write_trigger(plan, output, samples)
    t = Table(title=escape(f"perturbd trigger make · {output}"), header_style="bold")
    t.add_column("fact")
    t.add_column("value", justify="right")
    info, norms = plan.trigger.info, plan.trigger.norms(None, samples)
    t.add_row("kind · knowledge", f"{plan.trigger.kind} · {cfg.attack.knowledge}")
    t.add_row("L∞ / L2 (0–255)", f"{norms['linf']:.0f} / {norms['l2']:.1f}")
    if "fooling_rate_samples" in info:
        t.add_row("method · norm · budget", f"{info['method']} · {info['norm']} · {info['budget']:g}")
        hold = info["fooling_rate_holdout"]
        t.add_row("fooling rate samples / held-out", f"{pct(info['fooling_rate_samples'])} / {pct(hold) if hold is not None else '–'}")
        t.add_row("passes · seconds", f"{info['passes_used']} · {info['seconds']:.1f} s")
        m = plan.record["model"]
        surrogate = " (surrogate)" if m["surrogate"] else ""
        t.add_row("adversary model", escape(f"{m['arch']}{surrogate}, held-out accuracy {pct(m['holdout_accuracy'])}"))
    t.add_row("files", escape(", ".join(str(p) for p in written)))
    out_console.print(t)
