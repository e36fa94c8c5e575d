"""User-facing errors.

Every mistake a user can make (a bad config value, an unknown name, missing or corrupt data, a
checkpoint of another model) raises a :class:`PerturbdError`. The CLI (and :func:`exit_code`, for scripts) prints its message as one
line and exits with code 2; nothing else in the package catches it. The message says what is
wrong, the value received, and the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class PerturbdError(ValueError):
    """A user mistake. ``str(err)`` is one line: what is wrong, the value received, the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(PerturbdError):
    """A config value, CLI option or name is invalid."""


class DataError(PerturbdError):
    """A data set is missing, corrupt or has the wrong shape."""


class CheckpointError(PerturbdError):
    """A weights or trigger file is missing, corrupt, unsafe or belongs to another model."""


class OutputError(PerturbdError):
    """An output location cannot be written: not a folder, a name too long, read-only, no
    permission, no space left. Found before any work where it can be; otherwise nothing is left
    half written."""


def exit_code(main: Callable[[], object]) -> int:
    """``main()`` as a script's exit code: 0, or 2 with a :class:`PerturbdError` as one line on
    stderr (what the experiment scripts answer a user's mistake with, as ``perturbd`` does)."""
    try:
        main()
    except PerturbdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
