"""Run defences on a trained model and measure them with the metrics of DESIGN.md.

One evaluator per defence *kind* (a dict, not a chain of names), each reading only what its
kind's protocol in :mod:`perturbd.defenses.base` declares:

- ``dataset``: fit on the training set as trained on; against the saved poison indices, AUROC of
  ``scores_``, TPR / FPR of ``flagged_`` (the method's own threshold) and TPR at 5 % FPR (the
  best threshold on ``scores_`` whose FPR is at most 5 %).
- ``input``: fit on the defender's clean images; on clean versus triggered test images, AUROC,
  TPR / FPR at the method's own threshold (set for ``frr`` on the clean calibration images) and
  TPR at 5 % FPR from the ROC. The test images screened are a seeded random sample of at most
  ``eval_limit`` images whose true label is not the target, stratified over those classes
  (image-folder test sets are sorted by class: their first images are one class), drawn from
  ``derived_generator(seed, "strip-sample")``; the triggered images are the same images with the trigger.
- ``model``: fit on the defender's clean images, for the backdoored model and the clean twin;
  flagged labels, anomaly indices, the defence's per-label evidence and its figures.
- ``mitigation``: fit on the defender's clean images; clean accuracy and ASR on the test set
  before and after, and the clean images used.
- ``update``: needs the model before the update (a run of the update setting); audits
  before → model, and before → clean twin (the clean update) as the false-positive baseline;
  suspicious labels, per-label rows and the recovered triggers as PNG.

A defence's ``seed`` left at None is filled with ``derived_seed(seed, "defense:<name>")`` from
the run seed (:func:`~perturbd.defenses.base.seed_from_run`); a seed the user set is kept; the
report's params record the seed used. Every detection cell shows an operating point beside the
AUROC, e.g. ``AUROC 0.864 (TPR 0.00 / FPR 0.01 at its threshold; TPR 0.31 at 5 % FPR)``.

The defender's clean images never overlap the test images used to measure: they come from the
training split's clean (not poisoned) images (see :func:`defender_clean_set`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from perturbd.config import DefenseSpec
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import (
    DatasetScreen, Defense, Figures, InputScreen, Mitigator, ModelInspector, UpdateAuditor, build_defense, seed_from_run,
)  # fmt: skip
from perturbd.defenses.detection import auroc, detection_text, screened_sample, tpr_at_fpr
from perturbd.errors import ConfigError
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.provenance import code_identity
from perturbd.runs.rundir import write_json
from perturbd.seeding import derived_generator
from perturbd.triggers import Trigger

Log = Callable[[str], None]
Evaluation = tuple[dict[str, Any], dict[str, Any], Figures]


@dataclass(frozen=True)
class DefenseInputs:
    """What defences are run on and measured with.

    Attributes:
        model: the model under test (backdoored, or suspected to be).
        test: test images, for ASR, clean accuracy and input screening.
        clean: the defender's clean images, disjoint from ``test``, pre-shuffled (each defence
            takes the first ``n_clean``).
        clean_source: one line saying where ``clean`` came from, written to ``defenses.json``.
        train: the training set as trained on (with the poison), for dataset screening.
        poison_indices: positions of the poisoned images in ``train`` (ground truth).
        trigger, target: the attack's trigger and target label (ground truth).
        clean_model: the clean twin, for the false-positive baseline of model inspection (in
            the update setting: the model after a clean update).
        before_model: the model before the update (update setting only), for the update audit.
        seed: the run seed: defences' unset seeds and the sample of screened test images derive from it.
    """

    model: nn.Module
    test: ImageDataset
    clean: ImageDataset
    clean_source: str = "given"
    train: ImageDataset | None = None
    poison_indices: torch.Tensor | None = None
    trigger: Trigger | None = None
    target: int | None = None
    clean_model: nn.Module | None = None
    before_model: nn.Module | None = None
    seed: int = 0


@dataclass
class DefenseReport:
    """One defence's numbers, its matrix cell and its figures (written by :func:`write_defenses`)."""

    name: str
    kind: str
    params: dict[str, Any]
    seconds: float
    clean_used: int
    metrics: dict[str, Any]
    cell: dict[str, Any]
    figures: Figures = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "params": self.params, "seconds": self.seconds,
            "clean_images_used": self.clean_used, "metrics": self.metrics, "cell": self.cell, "figures": sorted(self.figures),
        }  # fmt: skip


def defender_clean_set(train: ImageDataset, poison_indices: torch.Tensor | None, seed: int) -> ImageDataset:
    """The defender's clean images: the training split minus the poisoned positions, in a seeded
    random order (so the first ``n`` are a random sample). Disjoint from the test split."""
    keep = torch.ones(len(train), dtype=torch.bool)
    if poison_indices is not None and len(poison_indices):
        keep[poison_indices] = False
    idx = torch.nonzero(keep).flatten()
    order = torch.randperm(len(idx), generator=derived_generator(seed, "defender"))
    return train.subset(idx[order])


def _need(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise ConfigError(f"defense '{name}' needs {what}; give it (e.g. --trigger FILE --target T, or a run directory)")
    return value


def _eval_dataset(d: DatasetScreen, inp: DefenseInputs, limit: int) -> Evaluation:
    train = _need(inp.train, "the training set (run it from an experiment or on a run directory)", d.name)
    d.fit(inp.model, train)
    flagged = d.flagged_
    m: dict[str, Any] = {"samples": len(train), "flagged": int(flagged.sum())}
    if inp.poison_indices is None or not len(inp.poison_indices):
        return m, {"value": None, "text": f"{m['flagged']} flagged (no ground truth)"}, {}
    truth = torch.zeros(len(train), dtype=torch.bool)
    truth[inp.poison_indices] = True
    m.update(
        poisoned=int(truth.sum()),
        auroc=auroc(truth, d.scores_),
        tpr=float(flagged[truth].float().mean()),
        fpr=float(flagged[~truth].float().mean()),
        tpr_at_5_fpr=tpr_at_fpr(truth, d.scores_),
    )
    return m, {"value": m["auroc"], "text": detection_text(m)}, {}


def _triggered_pair(inp: DefenseInputs, name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    trigger = _need(inp.trigger, "the trigger", name)
    target = _need(inp.target, "the target label", name)
    clean = inp.test.images[screened_sample(inp.test, target, limit, inp.seed)]
    return clean, trigger.apply(clean)


def _eval_input(d: InputScreen, inp: DefenseInputs, limit: int) -> Evaluation:
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
        }

    m: dict[str, Any] = {"test_images": len(clean), "frr_target": d.frr}
    if inp.clean_model is not None:
        m["clean_model"] = measure(inp.clean_model)
    m.update(measure(inp.model))
    return m, {"value": m["auroc"], "text": detection_text(m)}, {}


def _eval_model(d: ModelInspector, inp: DefenseInputs, limit: int) -> Evaluation:
    def inspect(model: nn.Module) -> dict[str, Any]:
        d.fit(model, inp.clean)
        return {
            "flagged_labels": list(d.flagged_labels_),
            "anomaly_index": [round(float(v), 4) for v in d.scores_],
            **d.evidence_,
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


def _eval_mitigation(d: Mitigator, inp: DefenseInputs, limit: int) -> Evaluation:
    def asr(model: nn.Module) -> float | None:
        if inp.trigger is None or inp.target is None:
            return None
        return attack_success_rate(model, inp.test, inp.trigger, inp.target)

    m: dict[str, Any] = {"clean_accuracy_before": clean_accuracy(inp.model, inp.test), "asr_before": asr(inp.model)}
    d.fit(inp.model, inp.clean)
    m["clean_accuracy_after"] = clean_accuracy(d.model_, inp.test)
    m["asr_after"] = asr(d.model_)
    m["accuracy_cost"] = m["clean_accuracy_before"] - m["clean_accuracy_after"]
    facts = getattr(d, "facts_", {})
    m.update(facts)
    cost = f"acc {-100 * m['accuracy_cost']:+.2f} pt, {d.clean_used_} clean" + (f", {facts['summary']}" if "summary" in facts else "")
    if m["asr_after"] is None:
        return m, {"value": None, "text": cost}, {}
    text = f"ASR {100 * m['asr_before']:.1f}→{100 * m['asr_after']:.1f} %, {cost}"
    return m, {"value": m["asr_after"], "accuracy_cost": m["accuracy_cost"], "text": text}, {}


def _eval_update(d: UpdateAuditor, inp: DefenseInputs, limit: int) -> Evaluation:
    if inp.before_model is None:
        raise ConfigError(f"defense '{d.name}' audits a model update and needs a run of the update setting (attack.setting=update)")
    before = inp.before_model

    def audit(model: nn.Module) -> dict[str, Any]:
        d.fit(model, inp.clean, before=before)
        return {"suspicious_labels": list(d.suspicious_labels_), "scores": [round(float(v), 4) for v in d.scores_], "labels": d.rows_, "seconds": d.seconds_}

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


_EVALUATORS: dict[str, Callable[[Any, DefenseInputs, int], Evaluation]] = {
    "dataset": _eval_dataset,
    "input": _eval_input,
    "model": _eval_model,
    "mitigation": _eval_mitigation,
    "update": _eval_update,
}


def evaluate_defense(defense: Defense, inp: DefenseInputs, *, eval_limit: int = 2000) -> DefenseReport:
    """Fit ``defense`` and measure it (see the module docstring for what each kind reports).

    ``eval_limit`` caps the clean and the triggered test images screened by input detectors (a
    stratified seeded sample, see :func:`screened_sample`). An unset ``seed`` of ``defense`` is
    filled from ``inp.seed`` first, so the report's params hold the seed used.
    A defence whose kind has no evaluator is a ConfigError naming the kinds that have one.
    """
    if defense.kind not in _EVALUATORS:
        raise ConfigError(f"defense '{defense.name}' has kind '{defense.kind}', which no evaluator measures; use one of {', '.join(_EVALUATORS)}")
    seed_from_run(defense, inp.seed)
    started = time.perf_counter()
    metrics, cell, figures = _EVALUATORS[defense.kind](defense, inp, eval_limit)
    seconds = time.perf_counter() - started
    return DefenseReport(defense.name, defense.kind, defense.get_params(), seconds, defense.clean_used_, metrics, cell, figures)


def run_defenses(specs: list[DefenseSpec], inp: DefenseInputs, *, log: Log | None = None, eval_limit: int = 2000) -> list[DefenseReport]:
    """Build every defence first (so a bad parameter fails before any work), then run each."""
    defenses = [build_defense(s.name, **s.params) for s in specs]
    reports = []
    for d in defenses:
        report = evaluate_defense(d, inp, eval_limit=eval_limit)
        if log:
            log(f"defense {d.name}: {report.cell['text']} ({report.seconds:.1f} s)")
        reports.append(report)
    return reports


def write_defenses(folder: Path, reports: list[DefenseReport], clean_source: str) -> None:
    """Write ``defenses.json`` (with the code that defended: :func:`~perturbd.provenance.code_identity`)
    and every report's figures into ``folder``."""
    folder = Path(folder)
    record = {"clean_source": clean_source, "code": code_identity(), "defenses": [r.to_json() for r in reports]}
    write_json(folder / "defenses.json", record)
    for r in reports:
        for filename, draw in r.figures.items():
            draw(folder / filename)
