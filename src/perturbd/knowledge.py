"""The adversary's knowledge levels: one frozen table that the config, the partition and the
adversary all read (no torch here: the config validates ``attack.knowledge`` against it).

| level | ``data``: the victim's training data | ``architecture``: the victim's | ``weights``: the victim's clean model |
|---|---|---|---|
| ``full``    | yes | yes | yes |
| ``data``    | yes | no (a surrogate of another architecture) | no |
| ``model``   | no (auxiliary data) | yes (retrained on the auxiliary data) | no |
| ``weights`` | no (auxiliary data) | yes | yes (as deployed) |
| ``none``    | no (auxiliary data) | no (a surrogate) | no |

"Knows the model" has two readings, both named: ``model`` (the architecture) and ``weights``
(the deployed model). What each level means for the run is in :mod:`perturbd.attack.partition`
(whose images) and :mod:`perturbd.attack.adversary` (which model).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from perturbd.registry import suggest

__all__ = ["KNOWLEDGE", "Knowledge", "check_knowledge"]


@dataclass(frozen=True)
class Knowledge:
    """What an adversary of one level holds.

    Attributes:
        data: the victim's training data (else auxiliary data held out of it).
        architecture: the victim's architecture (else a surrogate of another one).
        weights: the victim's clean model itself (implies ``architecture``).
        description: one phrase for the config's help.
    """

    data: bool
    architecture: bool
    weights: bool
    description: str


KNOWLEDGE: MappingProxyType[str, Knowledge] = MappingProxyType({
    "full": Knowledge(True, True, True, "the victim's data and clean model"),
    "data": Knowledge(True, False, False, "the data; a surrogate of another architecture"),
    "model": Knowledge(False, True, False, "the victim's architecture, retrained on auxiliary data"),
    "weights": Knowledge(False, True, True, "the victim's deployed clean model, auxiliary data"),
    "none": Knowledge(False, False, False, "neither: a surrogate of another architecture on auxiliary data"),
})  # fmt: skip


def check_knowledge(level: str) -> str:
    """``level`` if it names a row of :data:`KNOWLEDGE`; else a ``ValueError`` of one line naming
    the levels (and the closest, when one is close)."""
    if level not in KNOWLEDGE:
        hint = suggest(level, list(KNOWLEDGE))
        close = f" ({hint.removeprefix('; ')})" if hint.startswith("; did you mean") else ""
        raise ValueError(f"must be one of {', '.join(KNOWLEDGE)}{close}")
    return level
