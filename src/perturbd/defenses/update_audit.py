"""Update audit: did an update (the paper's second setting) plant a backdoor in a deployed model?

Compares the model before (``before``, OLD) and after (``model``, NEW) an update, on the
defender's clean images, with two kinds of evidence per label t:

- **Neural Cleanse** on both models (all labels in one batch, with Neural Cleanse's own defaults
  but for ``nc_epochs`` and ``nc_batch``, which default to its ``epochs`` and ``batch_size``): a backdoor toward t shows as a
  reversed mask for t that is anomalously small in NEW (anomaly index > ``anomaly_threshold``)
  while it was not in OLD, and shrank to at most ``shrink`` of its OLD L1 norm.
- **Universal perturbations**: for each label, a targeted universal perturbation of L∞ at most
  ``epsilon`` (pixel units) is computed on each model
  (:func:`~perturbd.triggers.adaptive.targeted_uaps`: all labels in one batch, signed-gradient
  steps over clean batches) and its fooling rate toward t is measured on other clean images
  (rounded to uint8, as files would be). An invisible backdoor is a small universal perturbation
  the update taught the model: the fooling rate toward t rises from OLD to NEW by at least
  ``rise``.

A label is ``suspicious`` when either holds; otherwise ``no change``. The verdict is output, not an
error: ``perturbd audit`` exits 0 either way.

After ``fit``: ``rows_`` (per label: verdict, evidence, anomaly indices, mask norms and fooling
rates of OLD and NEW), ``scores_`` (the fooling rate's rise toward each label, NEW − OLD),
``flagged_`` (per label), ``suspicious_labels_``, ``clean_used_``, ``seconds_`` and ``nc_`` (the
NEW model's :class:`~perturbd.defenses.neural_cleanse.NeuralCleanse`, for the trigger figures).

Example:
    >>> from perturbd.defenses import build_defense
    >>> build_defense("update_audit", epsilon=8).rise
    0.3
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, Figures, register_defense
from perturbd.defenses.nc_figures import recovered_trigger_png
from perturbd.defenses.neural_cleanse import NeuralCleanse
from perturbd.errors import ConfigError
from perturbd.progress import stage
from perturbd.triggers.adaptive import target_rates, targeted_uaps

NO_CHANGE = "no change"
_NC = NeuralCleanse.Params.model_fields  # the audit's nc_* defaults are Neural Cleanse's own


class AuditParams(DefenseParams):
    epsilon: float = Field(12.0, gt=0, le=255, description="L∞ budget of each universal perturbation, pixel units 0–255")
    uap_steps: int = Field(150, ge=1, le=100_000, description="signed-gradient steps of the universal perturbations")
    uap_batch: int = Field(64, ge=1, le=4096, description="clean images per universal-perturbation step")
    rise: float = Field(0.3, gt=0, le=1, description="a rise of the fooling rate toward t this large is suspicious")
    nc_epochs: int = Field(_NC["epochs"].default, ge=1, le=100_000, description="Neural Cleanse epochs (its default: the reference's 1000)")
    nc_batch: int = Field(_NC["batch_size"].default, ge=1, le=4096, description="Neural Cleanse clean images per mini-batch")
    anomaly_threshold: float = Field(2.0, gt=0, le=100, description="Neural Cleanse anomaly index that flags a label")
    shrink: float = Field(0.5, gt=0, le=1, description="and its reversed mask shrank to at most this share of OLD's")
    n_clean: int = Field(2000, ge=4, le=1_000_000, description="clean images: half to compute, half to measure")
    seed: int | None = Field(None, ge=0, description="seeds batches and initialisations (None: derived from the run seed)")


def _check_pair(before: nn.Module, after: nn.Module, clean: ImageDataset) -> None:
    for name, model in (("OLD", before), ("NEW", after)):
        shape, classes = getattr(model, "image_shape", None), getattr(model, "num_classes", None)
        if shape is not None and tuple(shape) != clean.image_shape:
            raise ConfigError(
                f"{name} model takes images of shape {tuple(shape)} but the data has {clean.image_shape}; "
                "audit with the data the model was trained on"
            )
        if classes is not None and classes != clean.num_classes:
            raise ConfigError(
                f"{name} model has {classes} classes but the data has {clean.num_classes}; audit with the data the model was trained on"
            )


@register_defense
class UpdateAudit(Defense):
    name = "update_audit"
    kind = "update"
    Params = AuditParams

    def fit(self, model: nn.Module, data: ImageDataset, *, before: nn.Module) -> UpdateAudit:
        """Compare ``before`` and ``model`` (after the update) and give a verdict per label.

        Args:
            model: the model after the update (NEW).
            data: the defender's clean images (pre-shuffled; the first ``n_clean`` are used: the
                first half computes the universal perturbations and runs Neural Cleanse, the
                second half measures fooling rates).
            before: the model before the update (OLD).

        Progress goes to the active monitor (:mod:`perturbd.progress`): a stage of four steps
        (Neural Cleanse on OLD and NEW, universal perturbations on OLD and NEW), theirs inside.
        """
        _check_pair(before, model, data)
        started = time.perf_counter()
        n = min(self.n_clean, len(data))
        if n < 4:
            raise ConfigError(f"{self.name} needs at least 4 clean images, got {n}")
        fit_part = data.subset(torch.arange(n // 2))
        measure = data.subset(torch.arange(n // 2, n))
        labels = list(range(data.num_classes))
        seed = self.rng_seed()
        nc_kw = dict(
            epochs=self.nc_epochs, batch_size=self.nc_batch, anomaly_threshold=self.anomaly_threshold, n_clean=len(fit_part), seed=seed
        )
        uap_kw = dict(epsilon=self.epsilon, steps=self.uap_steps, batch_size=self.uap_batch, seed=seed)
        with stage(self.name, 4) as progress:
            nc_old = NeuralCleanse(**nc_kw).fit(before, fit_part)
            progress.advance()
            self.nc_ = NeuralCleanse(**nc_kw).fit(model, fit_part)
            progress.advance()
            fool_old = target_rates(before, measure, targeted_uaps(before, fit_part.images, labels, **uap_kw))
            progress.advance()
            fool_new = target_rates(model, measure, targeted_uaps(model, fit_part.images, labels, **uap_kw))
            progress.advance()
        self.rows_ = [self._row(t, nc_old, fool_old[t], fool_new[t]) for t in labels]
        self.scores_ = torch.tensor([r["fooling_rise"] for r in self.rows_], dtype=torch.float32)
        self.flagged_ = torch.tensor([r["verdict"] != NO_CHANGE for r in self.rows_], dtype=torch.bool)
        self.suspicious_labels_ = [r["label"] for r in self.rows_ if r["verdict"] != NO_CHANGE]
        self.clean_used_ = n
        self.seconds_ = time.perf_counter() - started
        return self

    def _row(self, t: int, nc_old: NeuralCleanse, fool_old: float, fool_new: float) -> dict[str, Any]:
        """Label ``t``'s verdict and the evidence behind it."""
        l1_old, l1_new = float(nc_old.norms_[t]), float(self.nc_.norms_[t])
        i_old, i_new = float(nc_old.scores_[t]), float(self.nc_.scores_[t])
        evidence = []
        if i_new > self.anomaly_threshold >= i_old and l1_new <= self.shrink * l1_old:
            evidence.append(f"Neural Cleanse: mask L1 {l1_old:.1f} → {l1_new:.1f} px, anomaly index {i_old:.2f} → {i_new:.2f}")
        rise = fool_new - fool_old
        if rise >= self.rise:
            evidence.append(f"universal L∞ {self.epsilon:g} perturbation fools toward {t}: {100 * fool_old:.1f} % → {100 * fool_new:.1f} %")
        verdict = f"suspicious: backdoor toward label {t} introduced by the update" if evidence else NO_CHANGE
        return {
            "label": t, "verdict": verdict, "evidence": evidence,
            "nc_anomaly_index_old": i_old, "nc_anomaly_index_new": i_new, "nc_mask_l1_old": l1_old, "nc_mask_l1_new": l1_new,
            "fooling_rate_old": fool_old, "fooling_rate_new": fool_new, "fooling_rise": rise,
        }  # fmt: skip

    def figures(self) -> Figures:
        """``audit_trigger_<t>.png`` for each suspicious label t: the NEW model's recovered trigger."""
        return {
            f"audit_trigger_{t}.png": partial(recovered_trigger_png, *self.nc_.trigger_of(t), title=f"NEW model, label {t}")
            for t in self.suspicious_labels_
        }

    def to_json(self) -> dict[str, Any]:
        """What ``audit.json`` holds: suspicious labels, per-label rows, parameters (with the seed
        used), cost."""
        return {
            "suspicious_labels": self.suspicious_labels_, "labels": self.rows_, "params": self.get_params() | {"seed": self.rng_seed()},
            "clean_images_used": self.clean_used_, "seconds": self.seconds_,
        }  # fmt: skip
