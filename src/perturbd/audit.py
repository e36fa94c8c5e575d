"""Update audit: did an update (the paper's second setting) plant a backdoor in a deployed model?

Compares the model before (OLD) and after (NEW) an update, on the defender's clean images, with
two kinds of evidence per label t:

- **Neural Cleanse** on both models (all labels in one batch): a backdoor toward t shows as a
  reversed mask for t that is anomalously small in NEW (anomaly index > ``anomaly_threshold``)
  while it was not in OLD, and shrank to at most ``shrink`` of its OLD L1 norm.
- **Universal perturbations**: for each label, a targeted universal perturbation of L∞ at most
  ``epsilon`` (pixel units) is computed on each model (all labels in one batch, signed-gradient
  steps over clean batches) and its fooling rate toward t is measured on other clean images
  (rounded to uint8, as files would be). An invisible backdoor is a small universal perturbation
  the update taught the model: the fooling rate toward t rises from OLD to NEW by at least
  ``rise``.

A label is ``suspicious`` when either holds; otherwise ``no change``. The verdict is output, not an
error: the CLI exits 0 either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import DefenseParams, check_params, model_device
from perturbd.defenses.neural_cleanse import NeuralCleanse, frozen
from perturbd.errors import ConfigError
from perturbd.train import predict
from perturbd.triggers import add_delta

NO_CHANGE = "no change"


class AuditParams(DefenseParams):
    epsilon: float = Field(12.0, gt=0, le=255, description="L∞ budget of each universal perturbation, pixel units 0–255")
    uap_steps: int = Field(150, ge=1, le=100_000, description="signed-gradient steps of the universal perturbations")
    uap_batch: int = Field(64, ge=1, le=4096, description="clean images per universal-perturbation step")
    rise: float = Field(0.3, gt=0, le=1, description="a rise of the fooling rate toward t this large is suspicious")
    nc_steps: int = Field(300, ge=1, le=100_000, description="Neural Cleanse optimisation steps")
    nc_batch: int = Field(32, ge=1, le=4096, description="Neural Cleanse clean images per step")
    anomaly_threshold: float = Field(2.0, gt=0, le=100, description="Neural Cleanse anomaly index that flags a label")
    shrink: float = Field(0.5, gt=0, le=1, description="and its reversed mask shrank to at most this share of OLD's")
    n_clean: int = Field(2000, ge=4, le=1_000_000, description="clean images: half to compute, half to measure")
    seed: int = Field(0, ge=0, description="seeds batches and initialisations")


@dataclass
class AuditResult:
    """Per-label verdicts and the evidence behind them."""

    rows: list[dict[str, Any]]
    params: dict[str, Any]
    clean_used: int
    seconds: float
    nc_new: NeuralCleanse | None = field(default=None, repr=False)

    @property
    def suspicious(self) -> list[int]:
        return [r["label"] for r in self.rows if r["verdict"] != NO_CHANGE]

    def to_json(self) -> dict[str, Any]:
        return {"suspicious_labels": self.suspicious, "labels": self.rows, "params": self.params, "clean_images_used": self.clean_used, "seconds": self.seconds}


def universal_perturbations(
    model: nn.Module, images: torch.Tensor, labels: list[int], *, epsilon: float, steps: int, batch_size: int, seed: int
) -> torch.Tensor:
    """One targeted universal perturbation per label, ``(K, C, H, W)`` in pixel units (|δ| ≤ ε).

    Each step blends one clean batch with all K perturbations (one forward pass over K × batch
    images), descends the cross-entropy toward each label by a signed step of ``2.5 ε / steps``
    (at least ε/50) and clips to the L∞ ball.
    """
    device = model_device(model)
    k = len(labels)
    eps = epsilon / 255.0
    step = max(2.5 * eps / steps, eps / 50)
    delta = torch.zeros(k, *images.shape[1:], device=device)
    target = torch.tensor(labels, device=device)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(images))
    with frozen(model):
        for _ in range(steps):
            x = to_float01(images[torch.randint(0, len(images), (batch,), generator=gen)].to(device))
            delta.requires_grad_(True)
            adv = (x[None] + delta[:, None]).clamp(0, 1).flatten(0, 1)
            loss = F.cross_entropy(model(adv).float(), target.repeat_interleave(batch), reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() - step * grad.sign()).clamp(-eps, eps)
    return delta.cpu() * 255.0


def fooling_rates(model: nn.Module, data: ImageDataset, deltas: torch.Tensor) -> list[float]:
    """For each label k: the share of images not of class k that ``deltas[k]`` sends to k."""
    out = []
    for k, delta in enumerate(deltas):
        keep = data.labels != k
        if not bool(keep.any()):
            out.append(0.0)
            continue
        pred = predict(model, add_delta(data.images[keep], delta))
        out.append(float((pred == k).float().mean()))
    return out


def _check_pair(old: nn.Module, new: nn.Module, clean: ImageDataset) -> None:
    for name, model in (("OLD", old), ("NEW", new)):
        shape, classes = getattr(model, "image_shape", None), getattr(model, "num_classes", None)
        if shape is not None and tuple(shape) != clean.image_shape:
            raise ConfigError(f"{name} model takes images of shape {tuple(shape)} but the data has {clean.image_shape}; audit with the data the model was trained on")
        if classes is not None and classes != clean.num_classes:
            raise ConfigError(f"{name} model has {classes} classes but the data has {clean.num_classes}; audit with the data the model was trained on")


def audit_update(old: nn.Module, new: nn.Module, clean: ImageDataset, **params: Any) -> AuditResult:
    """Compare ``old`` and ``new`` on clean images and give a verdict per label.

    Args:
        clean: the defender's clean images (pre-shuffled; the first ``n_clean`` are used: the
            first half computes the universal perturbations and runs Neural Cleanse, the second
            half measures fooling rates).
        params: see :class:`AuditParams` (a bad value is a one-line ConfigError).
    """
    p = check_params("audit", AuditParams, params)
    _check_pair(old, new, clean)
    started = time.perf_counter()
    n = min(p.n_clean, len(clean))
    if n < 4:
        raise ConfigError(f"audit needs at least 4 clean images, got {n}")
    fit_part = clean.subset(torch.arange(n // 2))
    measure = clean.subset(torch.arange(n // 2, n))
    labels = list(range(clean.num_classes))
    nc_kw = dict(steps=p.nc_steps, batch_size=p.nc_batch, anomaly_threshold=p.anomaly_threshold, n_clean=len(fit_part), seed=p.seed)
    nc_old = NeuralCleanse(**nc_kw).fit(old, fit_part)
    nc_new = NeuralCleanse(**nc_kw).fit(new, fit_part)
    uap_kw = dict(epsilon=p.epsilon, steps=p.uap_steps, batch_size=p.uap_batch, seed=p.seed)
    fool_old = fooling_rates(old, measure, universal_perturbations(old, fit_part.images, labels, **uap_kw))
    fool_new = fooling_rates(new, measure, universal_perturbations(new, fit_part.images, labels, **uap_kw))
    rows = []
    for t in labels:
        l1_old, l1_new = float(nc_old.norms_[t]), float(nc_new.norms_[t])
        i_old, i_new = float(nc_old.scores_[t]), float(nc_new.scores_[t])
        evidence = []
        if i_new > p.anomaly_threshold >= i_old and l1_new <= p.shrink * l1_old:
            evidence.append(f"Neural Cleanse: mask L1 {l1_old:.1f} → {l1_new:.1f} px, anomaly index {i_old:.2f} → {i_new:.2f}")
        rise = fool_new[t] - fool_old[t]
        if rise >= p.rise:
            evidence.append(f"universal L∞ {p.epsilon:g} perturbation fools toward {t}: {100 * fool_old[t]:.1f} % → {100 * fool_new[t]:.1f} %")
        verdict = f"suspicious: backdoor toward label {t} introduced by the update" if evidence else NO_CHANGE
        rows.append({
            "label": t, "verdict": verdict, "evidence": evidence,
            "nc_anomaly_index_old": i_old, "nc_anomaly_index_new": i_new, "nc_mask_l1_old": l1_old, "nc_mask_l1_new": l1_new,
            "fooling_rate_old": fool_old[t], "fooling_rate_new": fool_new[t], "fooling_rise": rise,
        })  # fmt: skip
    return AuditResult(rows, p.model_dump(), n, time.perf_counter() - started, nc_new)
