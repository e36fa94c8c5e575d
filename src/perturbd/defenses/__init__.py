"""Defences against backdoors: one file per defence, one protocol per kind, one registry.

- dataset screening (:class:`DatasetScreen`): :mod:`activation_clustering`, :mod:`spectral_signature`,
  :mod:`spectre`
- input screening (:class:`InputScreen`): :mod:`strip`, :mod:`scale_up`, :mod:`teco` (its corruptions:
  :mod:`corruptions`), :mod:`ibd_psc`
- model inspection (:class:`ModelInspector`): :mod:`neural_cleanse`, :mod:`mm_bd`
- mitigation (:class:`Mitigator`): :mod:`fine_tuning`, :mod:`fine_pruning`, :mod:`distillation`,
  :mod:`adversarial_training`, :mod:`nad`, :mod:`ft_sam`, :mod:`anp`, :mod:`clp`, :mod:`ibau`
- update audit (:class:`UpdateAuditor`): :mod:`update_audit`
- training-time (:class:`TrainingDefense`): :mod:`abl`

Neural Cleanse's own helpers: :mod:`nc_schedule` (its cost schedule and early stop) and
:mod:`nc_figures` (its figures). What a kind means and how defences are measured on a run:
:mod:`perturbd.evaluation`.

Example:
    >>> from perturbd.defenses import build_defense, list_defenses
    >>> "strip" in list_defenses()
    True
    >>> det = build_defense("spectral_signature", epsilon=0.05)  # then det.fit(model, train).scores_
"""

from perturbd.defenses import (  # noqa: F401  (each module registers its defence)
    abl,
    activation_clustering,
    adversarial_training,
    anp,
    clp,
    distillation,
    fine_pruning,
    fine_tuning,
    ft_sam,
    ibau,
    ibd_psc,
    mm_bd,
    nad,
    neural_cleanse,
    scale_up,
    spectral_signature,
    spectre,
    strip,
    teco,
    update_audit,
)
from perturbd.defenses.base import (
    DatasetScreen,
    Defense,
    DefenseParams,
    InputScreen,
    Mitigator,
    ModelInspector,
    TrainingDefense,
    UpdateAuditor,
    build_defense,
    get_defense,
    list_defenses,
    register_defense,
)

__all__ = [
    "DatasetScreen",
    "Defense",
    "DefenseParams",
    "InputScreen",
    "Mitigator",
    "ModelInspector",
    "TrainingDefense",
    "UpdateAuditor",
    "build_defense",
    "get_defense",
    "list_defenses",
    "register_defense",
]
