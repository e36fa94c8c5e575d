"""``perturbd scan MODEL``: model-level detectors on any model perturbd loads, a verdict per label,
``scan.json`` and ``scan.html``, and an exit code a release pipeline gates on (0 clean, 1 flagged,
2 a user mistake)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from perturbd.cli.app import DataRootOpt, ParamOpt, TrustCodeOpt, app, console, defense_params, out_console
from perturbd.cli.defences import ArchOpt, ModelSetOpt, model_options
from perturbd.errors import ConfigError

SCAN_FILES = ("scan.json", "scan.html")


def parse_shape(text: str) -> tuple[int, int, int]:
    """``--image-shape`` as ``(C, H, W)``: ``3x32x32`` or ``3,32,32``."""
    parts = re.split(r"[x,×]", text.strip().lower())
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--image-shape takes C,H,W (e.g. 3,32,32 or 3x32x32), got '{text}'")
    return shape


def _check_out(folder: Path) -> Path:
    """``--out`` must be new, empty, or an earlier scan's folder (replaced when this one is done)."""
    from perturbd.runs.rundir import check_output

    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / SCAN_FILES[0]).is_file())):
        raise ConfigError(f"--out {folder} exists and is neither empty nor an earlier scan's folder; give a new folder")
    check_output(folder.parent, "--out", folder.name)
    return folder


@app.command()
def scan(
    model: Annotated[
        Path, typer.Argument(help="a run directory, or a model file: perturbd's checkpoint, TorchScript, or a state dict with --arch")
    ],
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="data set the model classifies, as in run configs (default: a run's; none: data-free detectors only)"),
    ] = None,
    detector: Annotated[
        Optional[list[str]],
        typer.Option("--detector", "-d", help="a model-level detector (repeatable; default: mm_bd, and neural_cleanse with data)"),
    ] = None,
    params: ParamOpt = None,
    fail_on: Annotated[int, typer.Option("--fail-on", help="how many detectors must flag a label for exit code 1")] = 1,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="new folder for scan.json, scan.html and figures (default: ./scan-<model>)")
    ] = None,
    image_shape: Annotated[
        Optional[str], typer.Option("--image-shape", help="C,H,W the model takes, without data (a perturbd checkpoint records it)")
    ] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="classes the model gives, without data")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed the detectors' seeds derive from (default: a run's, else 0)")] = None,
    data_root: DataRootOpt = None,
    arch: ArchOpt = None,
    sets: ModelSetOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Scan a model for backdoors before deploying it: each model-level detector gives a verdict
    per label (score, threshold, evidence, figures) in scan.json and scan.html. Exit code 0: clean;
    1: at least --fail-on detectors flag a label; 2: a mistake (one line, nothing written). Without
    --data only data-free detectors run (MM-BD); a state dict or TorchScript file then needs
    --image-shape and --num-classes."""
    from perturbd.evaluation.scan import build_detectors, default_detectors
    from perturbd.evaluation.scan import scan as run_scan
    from perturbd.limits import check_seed
    from perturbd.malloc import tune_malloc
    from perturbd.progress import watching
    from perturbd.report.console import RichMonitor, make_progress
    from perturbd.runs.saved import locate, recorded_shape

    spec = model_options(arch, None, sets)
    shape = parse_shape(image_shape) if image_shape is not None else None
    if num_classes is not None and not 1 <= num_classes <= 1_000_000:
        raise ConfigError(f"--num-classes must be in [1, 1000000], got {num_classes}")
    if seed is not None:
        check_seed(seed)
    saved = locate(model, trust_code=trust_code, model=spec)  # a missing or unreadable model: one line, before anything else
    with_data = data is not None or saved.config is not None
    names = list(detector) if detector else default_detectors(with_data)
    detectors = build_detectors(names, defense_params(names, params), with_data=with_data)
    if not 1 <= fail_on <= len(detectors):
        raise ConfigError(f"--fail-on must be in [1, {len(detectors)}] (the number of detectors), got {fail_on}")
    folder = _check_out(out or Path(f"scan-{model.stem if model.is_file() else model.name}"))
    tune_malloc()
    clean, run_seed, net = _load(saved, model, data, data_root, spec, trust_code, shape, num_classes, recorded_shape(saved))
    run_seed = seed if seed is not None else run_seed

    with make_progress(console) as progress, watching(RichMonitor(progress)):
        result = run_scan(net, clean, detectors, fail_on, seed=run_seed)
    _write(folder, result, str(model))
    _print(result, str(model))
    console.print(escape(f"wrote {folder / 'scan.json'} and {folder / 'scan.html'}"), highlight=False)
    raise typer.Exit(result.exit_code)


def _load(
    saved: Any,
    path: Path,
    data: str | None,
    data_root: Path | None,
    spec: dict[str, Any],
    trust_code: bool,
    shape: tuple[int, int, int] | None,
    num_classes: int | None,
    recorded: tuple[tuple[int, int, int], int] | None,
) -> tuple[Any, int, Any]:
    """``(clean images or None, run seed, model)``: with data (``--data`` or a run's) through the
    loader of ``perturbd defend``; without, built for ``--image-shape``/``--num-classes`` or the
    shape a perturbd checkpoint records."""
    from perturbd.runs.saved import build_saved, load_inputs

    if data is not None or saved.config is not None:
        if shape is not None or num_classes is not None:
            raise ConfigError("--image-shape and --num-classes are for a model without data; the data set gives them: drop them")
        inputs = load_inputs(path, data=data, data_root=data_root, model=spec, trust_code=trust_code)
        return inputs.clean, inputs.seed, inputs.model
    if recorded is not None and shape is None and num_classes is None:
        shape, num_classes = recorded
    if shape is None or num_classes is None:
        raise ConfigError(
            f"{path} comes without data: give the image shape and classes it takes (--image-shape C,H,W --num-classes K) or --data NAME"
        )
    return None, 0, build_saved(saved, shape, num_classes, spec)


def _write(folder: Path, result: Any, model: str) -> None:
    """scan.json, the figures and scan.html into ``folder``, all at once (an earlier scan's replaced)."""
    from perturbd.report.scan import scan_html
    from perturbd.runs.rundir import atomic_dir, write_json

    data = result.to_json()
    with atomic_dir(folder, replace=True) as tmp:
        write_json(tmp / "scan.json", data)
        for det in result.detectors:
            for filename, draw in det.figures.items():
                draw(tmp / filename)
        (tmp / "scan.html").write_text(scan_html(data, tmp, model), encoding="utf-8")


def _print(result: Any, model: str) -> None:
    t = Table(title=escape(f"perturbd scan · {model}"), header_style="bold")
    for col in ("detector", "verdict", "flagged labels", "largest score", "threshold", "seconds"):
        t.add_column(col)
    for d in result.detectors:
        top = max(d.rows, key=lambda r: r["score"])
        verdict = "[bold red]flagged" if d.flagged else "clean"
        t.add_row(
            d.name,
            verdict,
            str(d.flagged_labels or "none"),
            f"{top['score']:.3g} (label {top['label']})",
            f"{d.threshold:.3g}",
            f"{d.seconds:.1f}",
        )
    out_console.print(t)
    state = "[bold red]FLAGGED" if result.flagged else "[green]clean"
    out_console.print(f"verdict: {state}[/] ({len(result.flagging)} of {len(result.detectors)} detectors flag, --fail-on {result.fail_on})")
