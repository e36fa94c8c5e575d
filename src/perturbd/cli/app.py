"""The ``perturbd`` Typer app, its consoles and the options its commands share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape  # help texts are rich markup: [tensorboard] would be a style

from perturbd.config import parse_assignment

HELP = (
    "Embed, measure and remove invisible backdoors in CNN image classifiers "
    "(Liao et al., 2018: backdoors by invisible perturbation). "
    "Start with `perturbd run`; every mistake is one line and exit code 2."
)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=HELP)
trigger_app = typer.Typer(no_args_is_help=True, help="Build and look at triggers.")
app.add_typer(trigger_app, name="trigger")
console = Console(stderr=True)
out_console = Console()

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: section.key=value (repeatable)")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="folder holding downloaded data sets (sets data.root)")]
TensorBoardOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--tensorboard",
        metavar="DIR",
        help=escape("log every model's training loss and images/s per epoch to TensorBoard in DIR (pip install 'perturbd[tensorboard]')"),
    ),
]
ParamOpt = Annotated[Optional[list[str]], typer.Option("--param", "-p", help="a defence parameter: key=value (repeatable)")]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="build a model whose run folder or checkpoint names code to run (factory:, torchscript:): only if you trust who wrote it",
    ),
]


def params_of(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML; a one-line error for anything else."""
    return dict(parse_assignment(item, "--param takes key=value") for item in items or [])


def overrides(sets: list[str] | None, data_root: Path | None) -> list[str]:
    """``--set`` values, and ``data.root`` from ``--data-root``."""
    out = list(sets or [])
    if data_root is not None:
        out.append(f"data.root={data_root}")
    return out


@contextmanager
def with_tensorboard(inner: Any, folder: Path | None, run: str = "") -> Iterator[Any]:
    """The training monitor ``inner``, wrapped in a TensorBoard writer to ``folder`` when
    ``--tensorboard`` is given (nothing of TensorBoard is imported otherwise); closed at the end."""
    if folder is None:
        yield inner
        return
    from perturbd.report.tensorboard import TensorBoardMonitor

    with TensorBoardMonitor(folder, inner, run) as monitor:
        yield monitor
