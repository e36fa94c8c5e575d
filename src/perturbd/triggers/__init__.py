"""Triggers: static masks (``static.py``), adaptive, model-computed masks (``adaptive.py``), and the
invisible triggers that came after them: ``blended.py``, ``sig.py``, ``wanet.py``, ``ftrojan.py``,
``bpp.py``, ``adap_blend.py``; the model-computed ones ``lf.py`` and ``narcissus.py``."""

from perturbd.triggers import (
    adap_blend,  # noqa: F401  (fills the registry)
    adaptive,  # noqa: F401  (fills the registry)
    blended,  # noqa: F401  (fills the registry)
    bpp,  # noqa: F401  (fills the registry)
    ftrojan,  # noqa: F401  (fills the registry)
    lf,  # noqa: F401  (fills the registry)
    narcissus,  # noqa: F401  (fills the registry)
    sig,  # noqa: F401  (fills the registry)
    static,  # noqa: F401  (fills the registry)
    wanet,  # noqa: F401  (fills the registry)
)
from perturbd.triggers.base import (
    Trigger,
    TriggerContext,
    add_delta,
    build_trigger,
    get_trigger,
    list_triggers,
    needs_model,
    register_trigger,
    transform_images,
)

__all__ = [
    "Trigger",
    "TriggerContext",
    "add_delta",
    "build_trigger",
    "get_trigger",
    "list_triggers",
    "needs_model",
    "register_trigger",
    "transform_images",
]
