"""What a pydantic field accepts, as text: for one-line errors and for the listings (no torch here,
so ``perturbd defenses`` can list without importing it)."""

from __future__ import annotations

from typing import Any

import annotated_types as at


def bounds_text(field: Any, ge: str = "≥", le: str = "≤") -> str:
    """``"in [1, 1000]"``, ``"> 0"``, ``"≥ 0"``, or ``""`` when ``field`` (a pydantic ``FieldInfo``)
    declares no bounds; ``ge`` / ``le`` are the signs of a closed lower / upper bound."""
    lo: object = None
    hi: object = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else ge} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else le} {hi}"
    return ""
