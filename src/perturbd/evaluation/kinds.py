"""What a defence kind means, in one table: per kind, the protocol its fitted results follow, how
it is measured, how its matrix cell reads over seeds, and one line saying what it does.

A defence's ``kind`` (a class variable) names its row in :data:`KINDS`. A new defence of an
existing kind is one new file in :mod:`perturbd.defenses` and its ``@register_defense`` line;
a new kind is one :class:`Kind` here (with its protocol in :mod:`perturbd.defenses.base` and
its evaluator in :mod:`perturbd.evaluation.evaluators`).

Example:
    >>> from perturbd.evaluation.kinds import KINDS
    >>> KINDS["input"].about
    'screens inputs at inference'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from perturbd.defenses.base import DatasetScreen, Defense, InputScreen, Mitigator, ModelInspector, TrainingDefense, UpdateAuditor
from perturbd.errors import ConfigError
from perturbd.evaluation.evaluators import (
    Evaluation,
    measure_dataset,
    measure_input,
    measure_mitigation,
    measure_model,
    measure_training,
    measure_update,
    training_inputs,
)  # fmt: skip
from perturbd.evaluation.inputs import DefenseInputs
from perturbd.registry import suggest

Cells = Sequence[dict[str, Any]]
"""One defence's matrix cells (or its metrics) over the seeds of one attack, in seed order."""


@dataclass(frozen=True)
class Kind:
    """One defence kind.

    Attributes:
        name: the kind, as a defence's ``kind`` names it.
        about: one line: what a defence of this kind does.
        protocol: the :class:`typing.Protocol` a fitted defence of this kind satisfies (the
            results it sets); all that ``evaluate`` reads.
        evaluate: ``(defence, inputs, limit) -> (metrics, cell, figures)``: fits and measures a
            defence of this kind (:mod:`perturbd.evaluation.evaluators`).
        over_seeds: ``(cells, metrics) -> str``: the matrix cell of one defence on every seed of
            one attack (each seed's cell and metrics, in seed order).
        check: ``(defence, inputs)``: raises a one-line error, before any defence runs, when
            the inputs lack what a defence of this kind needs (default: nothing to check).
    """

    name: str
    about: str
    protocol: type
    evaluate: Callable[[Any, DefenseInputs, int], Evaluation]
    over_seeds: Callable[[Cells, Cells], str]
    check: Callable[[Defense, DefenseInputs], object] = lambda _d, _inp: None


def dots(values: Sequence[Any], fmt: str) -> str:
    """``0.990 · 0.420 · –``: each value formatted with ``fmt``, a dash for None."""
    return " · ".join("–" if v is None else format(v, fmt) for v in values)


def _values(cells: Cells) -> list[Any]:
    return [c.get("value") for c in cells]


def _detection(cells: Cells, metrics: Cells) -> str:
    """AUROC and TPR at 5 % FPR per seed; for dataset screening, the target's poisoned share per seed."""
    text = f"AUROC {dots(_values(cells), '.3f')}; TPR at 5 % FPR {dots([m.get('tpr_at_5_fpr') for m in metrics], '.2f')}"
    shares = [m.get("target_share") for m in metrics]
    if any(s is not None for s in shares):
        text += f"; target class poisoned {dots([None if s is None else 100 * s for s in shares], '.0f')} %"
    return text


def _verdicts(cells: Cells, metrics: Cells) -> str:
    flagged = sum(bool(m.get("target_flagged")) for m in metrics)
    return f"target flagged {flagged}/{len(cells)}; anomaly index {dots(_values(cells), '.2f')}"


#: an attack counts as removed on a seed when the ASR after the mitigation is below this (the
#: removal matrix's "how many seeds bring the ASR under 10 %")
REMOVED_BELOW = 0.10


def _removal(cells: Cells, metrics: Cells) -> str:
    """ASR after, R-Acc and DER per seed (R-Acc and DER where the seed's cell holds them: older
    runs' do not), the mean accuracy change, the fit's wall time per seed (from its metrics), and
    on how many seeds the ASR fell under 10 %."""
    after = [c.get("value") for c in cells]
    text = f"ASR after {dots([None if v is None else 100 * v for v in after], '.1f')} %"
    racc = [c.get("robust_accuracy") for c in cells]
    if any(v is not None for v in racc):
        text += f"; R-Acc {dots([None if v is None else 100 * v for v in racc], '.1f')} %"
    der = [c.get("der") for c in cells]
    if any(v is not None for v in der):
        text += f"; DER {dots(der, '.2f')}"
    costs = [c["accuracy_cost"] for c in cells if c.get("accuracy_cost") is not None]
    if costs:
        text += f"; acc. {-100 * sum(costs) / len(costs):+.2f} pt (mean)"
    seconds = [m.get("seconds") for m in metrics]
    if any(isinstance(v, (int, float)) for v in seconds):
        text += f"; fit {dots([v if isinstance(v, (int, float)) else None for v in seconds], '.0f')} s"
    measured = [v for v in after if v is not None]
    if measured:
        text += f"; ASR < {100 * REMOVED_BELOW:.0f} % in {sum(v < REMOVED_BELOW for v in measured)}/{len(measured)}"
    return text


def plain_over_seeds(cells: Cells, metrics: Cells) -> str:
    """Each seed's cell value (three significant digits): the kinds without their own form, and
    a saved run's kind this version does not know."""
    return dots(_values(cells), ".3g")


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("dataset", "screens the training set for poisoned images", DatasetScreen, measure_dataset, _detection),
    Kind("input", "screens inputs at inference", InputScreen, measure_input, _detection),
    Kind("model", "inspects a model for a backdoored label", ModelInspector, measure_model, _verdicts),
    Kind("mitigation", "repairs a model: a copy without the backdoor", Mitigator, measure_mitigation, _removal),
    Kind("update", "audits an update for a planted backdoor", UpdateAuditor, measure_update, plain_over_seeds),
    Kind("training", "trains the victim on the poisoned set without the backdoor", TrainingDefense, measure_training, _removal,
         training_inputs),
)}  # fmt: skip


def kind_of(defense: Defense) -> Kind:
    """The row of ``defense``'s kind; a one-line :class:`ConfigError` naming the kinds if none."""
    try:
        return KINDS[defense.kind]
    except KeyError:
        raise ConfigError(
            f"defense '{defense.name}' has kind '{defense.kind}', which no evaluator measures{suggest(defense.kind, list(KINDS))}"
        ) from None


def over_seeds(kind: str | None, cells: Cells, metrics: Cells) -> str:
    """The matrix cell of one defence over seeds, in its kind's form (a saved run may name no kind,
    or one this version does not know: then :func:`plain_over_seeds`)."""
    row = KINDS.get(kind or "")
    return (row.over_seeds if row else plain_over_seeds)(cells, metrics)


def missing_results(defense: Defense) -> list[str]:
    """The members its kind's protocol declares that a (fitted) ``defense`` lacks; ``[]`` if none."""
    protocol = kind_of(defense).protocol
    names = set(protocol.__annotations__) | {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(n for n in names if not hasattr(defense, n))
