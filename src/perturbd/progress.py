"""How the library reports progress to its caller: a ``Log`` is a function that takes one line.

The attack settings and the defence harness both report through it; the command line passes a
function that prints, a library caller may pass ``print``, a list's ``append`` or nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]
"""Takes one line of progress (no trailing newline); its return value is ignored."""
