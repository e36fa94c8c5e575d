"""The ``perturbd`` command: parse, load the config, call the library, print a rich summary.

One module per group of commands; they defer the library's heavy modules into the commands, so
that ``perturbd --help`` and a config mistake answer before torch loads. Every
:class:`~perturbd.errors.PerturbdError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from perturbd.cli import defences, experiments, export, triggers  # noqa: F401  (each adds its commands to the app)
from perturbd.cli.app import app, console
from perturbd.errors import PerturbdError

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point: one line and exit code 2 for every user mistake. The commands are the
    entry points: one that trains sets glibc's malloc for tensors and torch's threads from its config
    (:func:`perturbd.process.tune_process`), one that defends sets the malloc
    (:func:`perturbd.malloc.tune_malloc`); listing and reporting leave the process alone."""
    try:
        app()
    except PerturbdError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted; finished runs are kept, partial ones were removed")
        sys.exit(130)
