"""Triggers: static masks (``static.py``) and adaptive, model-computed masks (``adaptive.py``)."""

from perturbd.triggers.base import (
    Trigger,
    TriggerContext,
    add_delta,
    build_trigger,
    get_trigger,
    list_triggers,
    needs_model,
    register_trigger,
)
from perturbd.triggers import static  # noqa: F401  (fills the registry)
from perturbd.triggers import adaptive  # noqa: F401  (fills the registry)

__all__ = [
    "Trigger",
    "TriggerContext",
    "add_delta",
    "build_trigger",
    "get_trigger",
    "list_triggers",
    "needs_model",
    "register_trigger",
]
