"""Measuring defences: run them on a model and report what they found, kind by kind.

- :mod:`.kinds`: what a defence kind means, in one table (:data:`~.kinds.KINDS`: its protocol,
  its evaluator, its matrix cell over seeds, one line about it);
- :mod:`.harness`: :func:`run_defenses`, :func:`evaluate_defense`, :func:`write_defenses`;
- :mod:`.inputs`: :class:`DefenseInputs` and the defender's clean images;
- :mod:`.evaluators`: how each kind is measured; :mod:`.detection`: AUROC, TPR at a fixed FPR,
  the screened sample of test images.

The defences themselves are in :mod:`perturbd.defenses`.

Example:
    >>> from perturbd.evaluation import KINDS
    >>> sorted(KINDS)
    ['dataset', 'input', 'mitigation', 'model', 'training', 'update']
"""

from perturbd.evaluation.harness import DefenseReport, evaluate_defense, run_defenses, write_defenses
from perturbd.evaluation.inputs import DefenseInputs, defender_clean_set
from perturbd.evaluation.kinds import KINDS, Kind, kind_of

__all__ = [
    "KINDS",
    "DefenseInputs",
    "DefenseReport",
    "Kind",
    "defender_clean_set",
    "evaluate_defense",
    "kind_of",
    "run_defenses",
    "write_defenses",
]
