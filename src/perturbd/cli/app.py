"""The ``perturbd`` Typer app, its consoles and the options its commands share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape  # help texts are rich markup: [tensorboard] would be a style
from typer.core import TyperGroup

from perturbd.config import parse_assignment
from perturbd.errors import ConfigError
from perturbd.version import __version__

HELP = (
    "Embed, measure and remove invisible backdoors in CNN image classifiers "
    "(Liao et al., 2018: backdoors by invisible perturbation). "
    "Start with `perturbd run`; every mistake is one line and exit code 2."
)

#: the order ``perturbd --help`` lists the commands in: what a user needs first, first; a command
#: not named here follows, in the order it was registered
ORDER = ("run", "sweep", "report", "reproduce", "trigger", "defend", "defenses", "audit", "scan", "export", "datasets", "models")


#: an option's value in its help, by the type typer would show (click's own names)
METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH"}


def _tidy(params: list[Any], ctx: Any) -> list[Any]:
    """Options as a shell's help shows them: a flag (``--force``, ``--help``) with no placeholder
    (not ``<bool>``), an option with a value by its type in capitals (``--out PATH``, ``--set
    TEXT``, not ``<list[str]>``), unless the option names its own (``--tensorboard DIR``)."""
    for p in params:
        if getattr(p, "param_type_name", "") != "option" or p.metavar is not None:
            continue
        shown = str(p.display_type(ctx)).strip("<>")  # typer's: <int>, <list[str]>, <path>, <a|b>
        shown = shown.removeprefix("list[").removesuffix("]") if shown.startswith("list[") else shown
        p.metavar = "" if p.is_flag else METAVARS.get(shown, shown if "|" in shown else shown.upper())
    return params


def _paragraphs(text: str | None) -> str | None:
    """A docstring's paragraphs, each on one line (the help wraps them to the terminal's width)."""
    return None if text is None else "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


class Group(TyperGroup):
    """Typer's group, listing its commands in :data:`ORDER` and showing help without ``<bool>``
    placeholders or a docstring's line breaks."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), names.index(n)))

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx), ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            command.help = _paragraphs(command.help)
            _tidy([*command.params, command.get_help_option(ctx)], ctx)
        return command


app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
trigger_app = typer.Typer(cls=Group, no_args_is_help=True, help="Build and look at triggers.")
app.add_typer(trigger_app, name="trigger")
console = Console(stderr=True)
out_console = Console()


def _version(show: bool) -> None:
    if show:
        out_console.print(f"perturbd {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", "-V", is_eager=True, callback=_version, help="print perturbd's version and exit")
    ] = False,
) -> None:
    pass


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
ParamOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--param",
        "-p",
        metavar="NAME.KEY=VALUE",
        help="a defence's parameter, e.g. neural_cleanse.epochs=3 (KEY=VALUE: every defence given); repeatable; see `perturbd defenses`",
    ),
]
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


def defense_params(names: list[str], items: list[str] | None) -> dict[str, dict[str, Any]]:
    """The ``-p`` values as the parameters of each defence in ``names``, checked against its
    ``Params`` (a one-line :class:`ConfigError` naming the parameter, with a suggestion for a
    misspelt one) before any work: ``NAME.KEY=VALUE`` sets KEY of the defence NAME, ``KEY=VALUE``
    sets KEY of every defence in ``names`` (each of which must have it). Imports the defences."""
    from perturbd.defenses import get_defense
    from perturbd.defenses.base import check_params

    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items or []:
        key, value = parse_assignment(item, "-p takes NAME.KEY=VALUE (one defence) or KEY=VALUE (every defence given)")
        name, dot, param = key.rpartition(".")
        if dot and name not in out:
            get_defense(name)  # an unknown defence: one line with a suggestion
            raise ConfigError(f"-p {item}: '{name}' is not among the defences given ({', '.join(names)}); add --defense {name}")
        if dot:
            out[name][param] = value
            continue
        having = [n for n in names if key in get_defense(n).Params.model_fields]
        if having and len(having) < len(names):
            lacking = next(n for n in names if n not in having)
            raise ConfigError(
                f"-p {item} sets every defence given, and '{lacking}' has no parameter '{key}'; write -p {having[0]}.{item} for one"
            )
        for params in out.values():
            params[key] = value
    for name, params in out.items():
        check_params(name, get_defense(name).Params, params)
    return out


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
