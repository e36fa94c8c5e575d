"""Defences against backdoors: one file per defence, two small protocols, one registry.

- dataset screening: :mod:`activation_clustering`, :mod:`spectral_signature`
- input screening: :mod:`strip`
- model inspection: :mod:`neural_cleanse`
- mitigation: :mod:`fine_tuning`, :mod:`fine_pruning`, :mod:`distillation`, :mod:`adversarial_training`

Example:
    >>> from perturbd.defenses import build_defense, list_defenses
    >>> "strip" in list_defenses()
    True
    >>> det = build_defense("spectral_signature", epsilon=0.05)  # then det.fit(model, train).scores_
"""

from perturbd.defenses.base import (
    Defense,
    DefenseParams,
    Detector,
    Mitigator,
    build_defense,
    get_defense,
    list_defenses,
    register_defense,
)
from perturbd.defenses import (  # noqa: F401  (each module registers its defence)
    activation_clustering,
    adversarial_training,
    distillation,
    fine_pruning,
    fine_tuning,
    neural_cleanse,
    spectral_signature,
    strip,
)

__all__ = [
    "Defense",
    "DefenseParams",
    "Detector",
    "Mitigator",
    "build_defense",
    "get_defense",
    "list_defenses",
    "register_defense",
]
