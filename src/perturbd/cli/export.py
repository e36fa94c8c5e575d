"""``perturbd export``: a run's poisoned training set, test set and trigger as files other tools read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from perturbd.cli.app import TrustCodeOpt, app, console, out_console


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `perturbd run`")],
    to: Annotated[
        Path,
        typer.Option(
            "--to",
            help="new (or empty) folder to write: train/, test/, manifest.csv, trigger.npy (trigger.safetensors for blended, wanet), "
            "trigger.png",
        ),
    ],
    trust_code: TrustCodeOpt = False,
) -> None:
    """Write a run's training set as trained on (poison included) and its test set as PNG class
    folders, with manifest.csv and the trigger; `data.name=imagefolder:DIR` reads them back."""
    from perturbd.progress import watching
    from perturbd.report.console import RichMonitor, make_progress
    from perturbd.runs.export import export_run

    with make_progress(console) as progress, watching(RichMonitor(progress)):
        done = export_run(run_dir, to, trust_code=trust_code)
    out_console.print(
        f"wrote {done.folder}: {done.train:,} training images ({done.poisoned:,} poisoned), {done.test:,} test images, "
        f"{len(done.class_folders)} classes, manifest.csv, {', '.join(p.name for p in sorted(done.folder.glob('trigger.*')))}",
        highlight=False,
        markup=False,
    )
