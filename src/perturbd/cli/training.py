"""``perturbd train``: a plain model on an image folder or data set, its clean accuracy and a trigger's ASR.

A command of its own rather than ``perturbd run`` with ``poison.rate=0``: a run is an attack
experiment (the adversary's share held out, a poison, a clean twin), and each of those would
have to be switched off; training on files as they are, as another tool would, is the export's
other half (:mod:`perturbd.runs.plain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from perturbd.cli.app import DataRootOpt, SetOpt, TensorBoardOpt, TrustCodeOpt, app, console, out_console, overrides, with_tensorboard
from perturbd.config import ExperimentConfig, load_config
from perturbd.errors import ConfigError
from perturbd.report.console import RichMonitor, make_progress, pct


def data_keys(data: str) -> list[str]:
    """The ``data`` section DATA gives: an existing folder is ``imagefolder:`` it (absolute), any
    other value a data set name; the config's subset limits are dropped (``--set`` may set them)."""
    folder = Path(data).expanduser()
    name = f"imagefolder:{folder.resolve()}" if ":" not in data and folder.is_dir() else data
    return [f"data.name={name}", "data.train_limit=null", "data.test_limit=null"]


def read_config(config: Path | None, given: list[str], trust_code: bool) -> ExperimentConfig:
    """``--config``: a YAML file, or a run directory (or its config.yaml), read as a received run
    folder is (:meth:`~perturbd.runs.folder.RunDir.stored_config`: code it names is refused unless
    ``--trust-code``); then ``given``."""
    if config is None:
        return load_config(None, given)
    from perturbd.runs.folder import RunDir

    path = Path(config).expanduser()
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or (path.name == RunDir.CONFIG and RunDir(folder).is_run()):
        if not RunDir(folder).has(RunDir.CONFIG):
            raise ConfigError(f"--config {config} is a folder without {RunDir.CONFIG}; give a YAML file or a run directory")
        return RunDir(folder).stored_config(given, trust_code=trust_code)
    return load_config(path, given)


@app.command()
def train(
    data: Annotated[
        str, typer.Argument(help="an image folder (train/ and test/ class folders, e.g. from `perturbd export`) or a data set name")
    ],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", "-c", help="experiment YAML or run directory for the model, training and seed (its data and attack are not used)"
        ),
    ] = None,
    trigger: Annotated[
        Optional[Path], typer.Option("--trigger", help="measure this trigger's ASR: trigger.npy (from `perturbd export`) or .safetensors")
    ] = None,
    target: Annotated[
        Optional[int], typer.Option("--target", help="the trigger's target label (default: --config's poison.target)")
    ] = None,
    source: Annotated[
        Optional[list[int]], typer.Option("--source", help="a source class of a source-specific trigger (repeatable; default: --config's)")
    ] = None,
    sets: SetOpt = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="folder for model.safetensors and train.json (default: ./train-<data>)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the --out folder if it is not empty")] = False,
    data_root: DataRootOpt = None,
    tensorboard: TensorBoardOpt = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Train a plain model on DATA as it is (nothing held out, nothing poisoned) and measure its
    clean accuracy and, with --trigger, the trigger's attack success rate. With an exported
    run's folder, its trigger.npy and the run's config (-c RUN), this is the export round trip."""
    cfg = read_config(config, [*data_keys(data), *overrides(sets, data_root)], trust_code)  # mistakes answered before torch loads
    if trigger is not None and target is None:
        if config is None:
            raise ConfigError("--trigger needs --target T, the label the trigger sends images to (or --config with its poison.target)")
        target = cfg.poison.target
    from perturbd.poisoning import sources_of

    sources = sorted(set(source)) if source else (sources_of(cfg.poison) if config is not None and trigger is not None else None)
    name = Path(data).name if Path(data).expanduser().is_dir() else data.replace(":", "-").replace("/", "-")
    folder = out or Path(f"train-{name}")
    from perturbd.process import tune_process
    from perturbd.runs.plain import check_trigger_file, read_trigger, train_plain
    from perturbd.runs.rundir import check_output

    if trigger is not None:
        check_trigger_file(trigger)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
        raise ConfigError(f"--out {folder} exists and is not an empty folder; give a new folder with -o, or --force to replace it")
    check_output(folder.parent, "--out", folder.name)
    trig = read_trigger(trigger) if trigger is not None else None
    tune_process(cfg.train.threads)
    with make_progress(console) as progress, with_tensorboard(RichMonitor(progress), tensorboard, folder.name) as monitor:
        done = train_plain(
            cfg, folder, trigger=trig, target=target, sources=sources, trigger_source=str(trigger or ""), monitor=monitor, replace=force
        )
    r = done.record
    t = Table(title=escape(f"perturbd train · {data}"), header_style="bold")
    t.add_column("number")
    t.add_column("value", justify="right")
    order = "the export's (manifest.csv)" if r["train_order"] == "manifest" else "the folder's"
    t.add_row("training / test images", f"{r['train_images']:,} / {r['test_images']:,}")
    t.add_row("training order", order)
    t.add_row("clean accuracy", pct(done.clean_accuracy))
    if done.attack_success_rate is not None:
        whom = f"sources {r['sources']}" if r["sources"] else "all other classes"
        t.add_row(escape(f"ASR → label {r['target']} ({whom})"), pct(done.attack_success_rate))
    t.add_row("seed · training seconds", f"{r['seed']} · {r['train_seconds']:.1f}")
    out_console.print(t)
    console.print(escape(f"wrote {done.folder}"), highlight=False)
