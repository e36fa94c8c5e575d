"""How each defence kind is measured: one function per kind, reading only what its protocol in
:mod:`perturbd.defenses.base` declares. :data:`perturbd.evaluation.kinds.KINDS` names which
function measures which kind.

Each function takes the defence (built, not yet fitted), the :class:`DefenseInputs` and
``limit`` (the most test images an input screen is measured on) and returns the defence's
metrics (JSON-ready), its matrix cell (``value``: the number the matrix's CSV holds, ``text``:
the Markdown cell) and its figures (file name → draw into that path):

- dataset: fit on the training set as trained on; against the saved poison indices, AUROC of
  ``scores_``, TPR / FPR of ``flagged_`` (the method's own threshold) and TPR at 5 % FPR (the
  best threshold on ``scores_`` whose FPR is at most 5 %); beside them the poisoned share of
  each label as trained on (``poisoned_share``) and of the target (``target_share``; the cell
  ends ``class 0 33 % poisoned``): a per-class method reads each class at its own share. A
  defence with ``epsilon_source = "oracle"`` gets the target's share as its ε before the fit.
- input: fit on the defender's clean images; on clean versus triggered test images, AUROC,
  TPR / FPR at the method's own threshold (set for ``frr`` on the clean calibration images) and
  TPR at 5 % FPR from the ROC. The test images screened are a seeded random sample of at most
  ``limit`` images whose true label is not the target, stratified over those classes
  (image-folder test sets are sorted by class: their first images are one class), drawn from
  ``derived_generator(seed, "strip-sample")``; the triggered images are the same images with the
  trigger, except for a source-specific attack (``sources``): then they are the same draw from
  the source classes only (the clean ones still come from every class but the target).
- model: fit on the defender's clean images, for the backdoored model and the clean twin;
  flagged labels, anomaly indices, the defence's per-label evidence and its figures.

An input screen or a model inspector may also set ``facts_`` (optional, JSON-ready): what it
used, copied into its metrics for each model screened (STRIP: the overlay and calibration images
used and the FPR measured on the calibration images; Neural Cleanse: the clean images drawn from).
The input cell shows the target FPR (``frr``) beside the FPR measured on the test images, and
ends with the AUROC the same screen reaches on the clean twin (``; clean model AUROC 0.512``),
when there is one: how much of the score the trigger earns without a backdoor.
- mitigation: fit on the defender's clean images; on the test set before and after, clean
  accuracy, ASR and R-Acc (robust accuracy: the triggered images classified as their true label,
  from the same pass as the ASR), the accuracy cost (before − after), BackdoorBench's DER, the
  clean images used and the wall time of the fit alone (``seconds``; the measuring is not in it);
  names, labels and formats: :data:`perturbd.runs.results.REMOVAL`, definitions:
  :mod:`perturbd.metrics`. The ASR and R-Acc count the source classes only for a source-specific
  attack (as the run's), whose other classes' rate is reported beside them
  (``non_source_asr_before`` / ``_after``). The cell holds ``value`` (ASR after),
  ``accuracy_cost``, ``robust_accuracy`` (after) and ``der``.

- training: a training-time defence trains its own model from the victim's initial weights on
  the poisoned training set with the victim's recipe (``initial_model``, ``train``,
  ``train_config``: a run gives them; a trained model alone does not, and that is one line); it
  is measured as a mitigation against the model trained plainly (``inp.model``: ASR, R-Acc,
  accuracy cost and DER against it), plus the images it isolated (``isolated``) and, against the
  poison indices, how many of them were poisoned (``poisoned_isolated``) and that share
  (``isolation_precision``, in the cell as a percentage).

A source-specific attack's sources are in the input, mitigation and training metrics (``sources``).
- update: needs the model before the update (a run of the update setting); audits
  before → model, and before → clean twin (the clean update) as the false-positive baseline;
  suspicious labels, per-label rows and the recovered triggers as PNG.

Every detection cell shows an operating point beside the AUROC, e.g.
``AUROC 0.864 (TPR 0.00 / FPR 0.03 (target 0.01) at its threshold; TPR 0.31 at 5 % FPR)`` (input screens; a
dataset screen sets no target).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import (
    DatasetScreen,
    Defense,
    Figures,
    InputScreen,
    Mitigator,
    ModelInspector,
    TrainingDefense,
    UpdateAuditor,
    epsilon_from_truth,
)
from perturbd.errors import ConfigError
from perturbd.evaluation.detection import auroc, detection_text, screened_sample, tpr_at_fpr
from perturbd.evaluation.inputs import DefenseInputs
from perturbd.metrics import clean_accuracy, defense_effectiveness_rating, non_source_rate, triggered_outcome

Evaluation = tuple[dict[str, Any], dict[str, Any], Figures]
"""What an evaluator returns: the metrics, the matrix cell and the figures."""


def _need(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise ConfigError(f"defense '{name}' needs {what}; give it (e.g. --trigger FILE --target T, or a run directory)")
    return value


def poisoned_shares(labels: torch.Tensor, poison_indices: torch.Tensor, num_classes: int) -> dict[int, float]:
    """Per label (as trained on), the share of its images that are poisoned; only labels with poison."""
    total = torch.bincount(labels, minlength=num_classes)
    poisoned = torch.bincount(labels[poison_indices], minlength=num_classes)
    return {c: float(poisoned[c]) / int(total[c]) for c in range(num_classes) if int(poisoned[c])}


def _sources(inp: DefenseInputs) -> dict[str, Any]:
    """``{"sources": [...]}`` for a source-specific attack, else nothing: the classes every ASR counts."""
    return {} if inp.sources is None else {"sources": list(inp.sources)}


def measure_dataset(d: DatasetScreen, inp: DefenseInputs, limit: int) -> Evaluation:
    """Dataset screening: see the module docstring."""
    train = _need(inp.train, "the training set (run it from an experiment or on a run directory)", d.name)
    poison = inp.poison_indices if inp.poison_indices is not None and len(inp.poison_indices) else None
    shares = {} if poison is None else poisoned_shares(train.labels, poison, train.num_classes)
    # the target's share; without a target, the most poisoned label's
    t = inp.target if inp.target is not None else max(shares, key=shares.__getitem__, default=None)
    epsilon_from_truth(cast(Defense, d), None if poison is None or t is None else shares.get(t, 0.0))
    d.fit(inp.model, train)
    flagged = d.flagged_
    m: dict[str, Any] = {"samples": len(train), "flagged": int(flagged.sum())}
    if poison is None:
        return m, {"value": None, "text": f"{m['flagged']} flagged (no ground truth)"}, {}
    truth = torch.zeros(len(train), dtype=torch.bool)
    truth[poison] = True
    m.update(
        poisoned=int(truth.sum()),
        auroc=auroc(truth, d.scores_),
        tpr=float(flagged[truth].float().mean()),
        fpr=float(flagged[~truth].float().mean()),
        tpr_at_5_fpr=tpr_at_fpr(truth, d.scores_),
        poisoned_share={str(c): round(v, 4) for c, v in shares.items()},
        target_label=t,
        target_share=None if t is None else round(shares.get(t, 0.0), 4),
    )
    return m, {"value": m["auroc"], "text": f"{detection_text(m)}; {share_text(m)}"}, {}


def share_text(m: dict[str, Any]) -> str:
    """``class 0 33 % poisoned``: the target's (or most poisoned label's) poisoned share."""
    return f"class {m['target_label']} {100 * m['target_share']:.0f} % poisoned"


def _triggered_pair(inp: DefenseInputs, name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean test images screened (every class but the target) and the triggered ones (the
    same draw from the source classes only: the same images unless the attack is source-specific)."""
    trigger = _need(inp.trigger, "the trigger", name)
    target = _need(inp.target, "the target label", name)
    clean = inp.test.images[screened_sample(inp.test, target, limit, inp.seed)]
    if inp.sources is None:
        return clean, trigger.apply(clean)
    return clean, trigger.apply(inp.test.images[screened_sample(inp.test, target, limit, inp.seed, inp.sources)])


def measure_input(d: InputScreen, inp: DefenseInputs, limit: int) -> Evaluation:
    """Input screening: see the module docstring."""
    clean, triggered = _triggered_pair(inp, d.name, limit)

    def measure(model: nn.Module) -> dict[str, Any]:
        d.fit(model, inp.clean)
        s_clean, s_trig = d.score(clean), d.score(triggered)
        truth = torch.cat([torch.zeros(len(s_clean)), torch.ones(len(s_trig))]).bool()
        scores = torch.cat([s_clean, s_trig])
        return {
            "auroc": auroc(truth, scores),
            "tpr": float(d.flag_scores(s_trig).float().mean()),
            "fpr": float(d.flag_scores(s_clean).float().mean()),
            "tpr_at_5_fpr": tpr_at_fpr(truth, scores),
            "threshold": d.threshold_,
            **getattr(d, "facts_", {}),
        }

    m: dict[str, Any] = {"test_images": len(clean), "triggered_images": len(triggered), "frr_target": d.frr, **_sources(inp)}
    if inp.clean_model is not None:
        m["clean_model"] = measure(inp.clean_model)
    m.update(measure(inp.model))
    text = detection_text(m)
    if "clean_model" in m:  # the baseline beside the score: what the screen finds on a model without a backdoor
        text += f"; clean model AUROC {m['clean_model']['auroc']:.3f}"
    return m, {"value": m["auroc"], "text": text}, {}


def measure_model(d: ModelInspector, inp: DefenseInputs, limit: int) -> Evaluation:
    """Model inspection: see the module docstring."""

    def inspect(model: nn.Module) -> dict[str, Any]:
        d.fit(model, inp.clean)
        return {
            "flagged_labels": list(d.flagged_labels_),
            "anomaly_index": [round(float(v), 4) for v in d.scores_],
            **d.evidence_,
            **getattr(d, "facts_", {}),
            "seconds": d.seconds_,
        }

    m: dict[str, Any] = {}
    if inp.clean_model is not None:
        m["clean_model"] = inspect(inp.clean_model)
    m.update(inspect(inp.model))
    figures = d.figures()
    if inp.target is not None:
        t = inp.target
        m["target"] = t
        m["target_flagged"] = t in m["flagged_labels"]
        m["target_anomaly_index"] = m["anomaly_index"][t]
        verdict = f"flags {m['flagged_labels'] or 'none'}; t={t} index {m['target_anomaly_index']:.2f}"
        return m, {"value": m["target_anomaly_index"], "text": verdict}, figures
    return m, {"value": max(m["anomaly_index"]), "text": f"flags {m['flagged_labels'] or 'none'}"}, figures


def measure_mitigation(d: Mitigator, inp: DefenseInputs, limit: int) -> Evaluation:
    """Mitigation: see the module docstring."""
    return _removal(d, inp, lambda: d.fit(inp.model, inp.clean).model_)


def training_inputs(d: Defense, inp: DefenseInputs) -> tuple[ImageDataset, Callable[[], nn.Module], TrainConfig]:
    """What a training-time defence trains from (the poisoned set, the initial weights, the
    recipe); a one-line :class:`ConfigError` when ``inp`` lacks any (a trained model alone)."""
    train, initial, recipe = inp.train, inp.initial_model, inp.train_config
    if train is None or initial is None or recipe is None:
        raise ConfigError(
            f"defense '{d.name}' trains a model on the poisoned training set with the victim's recipe, which a trained model "
            f"alone does not give: name it in a run config (defenses: [{d.name}]) or defend a run directory of the before_training setting"
        )
    return train, initial, recipe


def measure_training(d: TrainingDefense, inp: DefenseInputs, limit: int) -> Evaluation:
    """Training-time defence: see the module docstring."""
    train, initial, recipe = training_inputs(cast(Defense, d), inp)
    m, cell, figures = _removal(d, inp, lambda: d.fit(initial, train, recipe).model_)
    isolated = d.isolated_
    m["isolated"] = len(isolated)
    if inp.poison_indices is not None and len(isolated):
        hits = int(torch.isin(isolated, inp.poison_indices).sum())
        m.update(poisoned_isolated=hits, isolation_precision=hits / len(isolated))
        cell["text"] += f", isolation precision {100 * m['isolation_precision']:.1f} %"
    return m, cell, figures


def _removal(d: Mitigator | TrainingDefense, inp: DefenseInputs, fitted: Callable[[], nn.Module]) -> Evaluation:
    """The removal metrics of a model ``fitted()`` makes (timed) against ``inp.model``: see the
    module docstring (mitigation)."""

    def outcome(model: nn.Module) -> dict[str, Any]:
        m: dict[str, Any] = {"clean_accuracy": clean_accuracy(model, inp.test), "asr": None, "robust_accuracy": None}
        if inp.trigger is not None and inp.target is not None:
            m["asr"], m["robust_accuracy"] = triggered_outcome(model, inp.test, inp.trigger, inp.target, inp.sources)
            if inp.sources is not None:
                m["non_source_asr"] = non_source_rate(model, inp.test, inp.trigger, inp.target, inp.sources)
        return m

    before = outcome(inp.model)
    started = time.perf_counter()
    model = fitted()
    seconds = time.perf_counter() - started
    after = outcome(model)
    m: dict[str, Any] = {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()} | _sources(inp)
    m["accuracy_cost"] = m["clean_accuracy_before"] - m["clean_accuracy_after"]
    m["der"] = (
        None
        if m["asr_after"] is None
        else defense_effectiveness_rating(m["asr_before"], m["asr_after"], m["clean_accuracy_before"], m["clean_accuracy_after"])
    )
    m["clean_images_used"] = d.clean_used_
    m["seconds"] = seconds
    facts = getattr(d, "facts_", {})
    m.update(facts)
    cost = f"acc {-100 * m['accuracy_cost']:+.2f} pt, {d.clean_used_} clean" + (f", {facts['summary']}" if "summary" in facts else "")
    if m["asr_after"] is None:
        return m, {"value": None, "accuracy_cost": m["accuracy_cost"], "text": cost}, {}
    racc = m["robust_accuracy_after"]
    text = f"ASR {100 * m['asr_before']:.1f}→{100 * m['asr_after']:.1f} %, R-Acc {100 * racc:.1f} %, DER {m['der']:.3f}, {cost}"
    cell = {"value": m["asr_after"], "accuracy_cost": m["accuracy_cost"], "robust_accuracy": racc, "der": m["der"], "text": text}
    return m, cell, {}


def measure_update(d: UpdateAuditor, inp: DefenseInputs, limit: int) -> Evaluation:
    """Update audit: see the module docstring."""
    if inp.before_model is None:
        raise ConfigError(f"defense '{d.name}' audits a model update and needs a run of the update setting (attack.setting=update)")
    before = inp.before_model

    def audit(model: nn.Module) -> dict[str, Any]:
        d.fit(model, inp.clean, before=before)
        return {
            "suspicious_labels": list(d.suspicious_labels_),
            "scores": [round(float(v), 4) for v in d.scores_],
            "labels": d.rows_,
            "seconds": d.seconds_,
        }

    m: dict[str, Any] = {}
    if inp.clean_model is not None:
        m["clean_model"] = audit(inp.clean_model)
    m.update(audit(inp.model))
    figures = d.figures()
    text = f"suspicious {m['suspicious_labels'] or 'none'}"
    if "clean_model" in m:
        text += f" (clean update: {m['clean_model']['suspicious_labels'] or 'none'})"
    if inp.target is None:
        return m, {"value": max(m["scores"]), "text": text}, figures
    t = inp.target
    m.update(target=t, target_flagged=t in m["suspicious_labels"], target_score=m["scores"][t])
    return m, {"value": m["target_score"], "text": f"{text}; t={t} UAP rise {100 * m['target_score']:+.1f} pt"}, figures
