"""One registry shape for models, triggers, data sources and defences.

Each family keeps a :class:`Registry` next to its definitions and exposes ``register_*``,
``list_*(pattern)`` and ``get_*(name)``. A duplicate name raises; an unknown name raises a
:class:`~perturbd.errors.ConfigError` with close matches.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from perturbd.errors import ConfigError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or a list of valid ones."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; choose one of: {', '.join(sorted(choices))}"


class Registry(Generic[T]):
    """A name → entry mapping filled where each entry is defined."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._entries[key] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's throw-away entry); a KeyError if it is not registered."""
        del self._entries[name]

    def get(self, name: str) -> T:
        """The entry called ``name``; a one-line :class:`ConfigError` with a suggestion if unknown."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'{suggest(name, list(self._entries))}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the shell-style ``pattern``, sorted."""
        return sorted(fnmatch.filter(self._entries, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
