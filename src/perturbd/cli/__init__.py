"""The ``perturbd`` command: parse, load the config, call the library, print a rich summary.

One module per group of commands; they defer the library's heavy modules into the commands, so
that ``perturbd --help`` and a config mistake answer before torch loads. Every
:class:`~perturbd.errors.PerturbdError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from perturbd.cli import defences, experiments, export, scan, training, triggers  # noqa: F401  (each adds its commands to the app)
from perturbd.cli.app import app, console
from perturbd.errors import PerturbdError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: one line and exit code 2 for every user mistake. The commands are the
    entry points: one that trains sets glibc's malloc for tensors and torch's threads from its config
    (:func:`perturbd.process.tune_process`), one that defends sets the malloc
    (:func:`perturbd.malloc.tune_malloc`); listing and reporting leave the process alone."""
    try:
        # click's own mistakes (an unknown option, a missing argument) come here too; the usage
        # lines name the command a user types, also under `python -m perturbd`
        code = app(standalone_mode=False, prog_name="perturbd")
    except PerturbdError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.TyperException as err:  # click's exceptions (typer vendors click)
        sys.exit(_usage_error(err))
    except KeyboardInterrupt:
        code = 130
    except typer.Abort:
        sys.exit(1)
    if code == 130:  # Ctrl-C: typer answers it with Exit(130)
        console.print("interrupted; finished runs are kept, partial ones were removed")
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(err: typer.TyperException) -> int:
    """A mistake click finds on the command line (an unknown option, a missing argument, an option
    value of the wrong type) as one line naming the fix, like every other; returns its exit code.
    With no arguments a group has printed its help already (``no_args_is_help``)."""
    if type(err).__name__ != "NoArgsIsHelpError":
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "perturbd"
        message = " ".join((err.format_message() if hasattr(err, "format_message") else str(err)).split()).rstrip(".")
        console.print(f"[bold red]error:[/] {escape(message)}; see `{escape(where)} --help`", highlight=False, soft_wrap=True)
    return int(getattr(err, "exit_code", 2))
