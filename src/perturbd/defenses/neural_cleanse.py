"""Neural Cleanse (Wang et al., IEEE S&P 2019): model inspection.

For every label k, reverse-engineer the smallest trigger that sends clean images to k: a mask
``m_k ∈ [0, 1]^{H×W}`` and a pattern ``p_k ∈ [0, 1]^{C×H×W}`` applied as
``x' = (1 − m_k) x + m_k p_k``, minimising ``CE(f(x'), k) + λ_k ‖m_k‖₁``. ``λ_k`` follows the
paper's schedule: every ``patience`` steps it is multiplied by ``cost_multiplier`` when the mean
attack success over those steps reached ``attack_threshold``, divided by ``cost_multiplier^1.5``
otherwise. The smallest mask that reached the threshold is kept. A backdoored label needs a much
smaller mask than the others: the MAD anomaly index ``(median − ‖m_k‖₁) / (1.4826 · MAD)`` above
``anomaly_threshold`` (2 in the paper) flags it.

All labels are optimised in **one batch** (``mode="batched"``): the K masks and patterns are one
``(K, …)`` tensor, each step blends the same clean batch with all K triggers and runs one forward
pass over ``K × batch_size`` images. Losses of different labels share no parameter and Adam is
element-wise, so this is the same optimisation as the label-by-label loop (``mode="loop"``, kept
for benchmarks) with the same batches: the same result, in one pass instead of K.

After ``fit``: ``norms_`` (mask L1, pixels), ``scores_`` (anomaly index per label, positive = small
side), ``flagged_`` (per label), ``flagged_labels_``, ``masks_`` ``(K, H, W)``, ``patterns_``
``(K, C, H, W)``, ``reached_`` (label reached the threshold), ``seconds_``, and ``evidence_``
(``mask_l1`` and ``reached`` per label, for reports); :meth:`figures` draws the recovered trigger.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, Figures, register_defense, take
from perturbd.defenses.figures import mask_norms_png, recovered_trigger_png
from perturbd.models import frozen, model_device


def reverse_triggers(
    model: nn.Module,
    images: torch.Tensor,
    labels: list[int],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    init_cost: float,
    cost_multiplier: float,
    patience: int,
    attack_threshold: float,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Reverse-engineer one trigger per label in ``labels``, all in one batch.

    Args:
        images: clean uint8 (or float [0, 1]) images ``(N, C, H, W)`` to blend with.
        labels: the target labels, one trigger each.
        seed: the clean batches come from one generator seeded here, and each label's initial
            pattern from ``seed`` and the label, so any grouping of labels gives the same result.

    Returns: ``masks`` ``(K, H, W)``, ``patterns`` ``(K, C, H, W)``, ``norms`` ``(K,)`` (mask L1),
    ``reached`` ``(K,)`` bool, ``success`` ``(K,)`` (attack success of the kept trigger's batch).
    """
    device = model_device(model)
    k = len(labels)
    c, h, w = images.shape[1:]
    init = torch.stack([torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed * 1009 + lab)) for lab in labels])
    mask_p = torch.zeros(k, 1, h, w, device=device, requires_grad=True)
    pattern_p = torch.atanh((init * 2 - 1).clamp(-0.999, 0.999)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pattern_p], lr=lr, betas=(0.5, 0.9))
    target = torch.tensor(labels, device=device)
    cost = torch.full((k,), init_cost, device=device)
    best_norm = torch.full((k,), float("inf"), device=device)
    best_mask = torch.zeros(k, 1, h, w, device=device)
    best_pattern = torch.zeros(k, c, h, w, device=device)
    best_success = torch.zeros(k, device=device)
    acc_sum = torch.zeros(k, device=device)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch_size, len(images))
    with frozen(model):
        for step in range(steps):
            idx = torch.randint(0, len(images), (batch,), generator=gen)
            x = to_float01(images[idx].to(device))
            mask = (torch.tanh(mask_p) + 1) / 2
            pattern = (torch.tanh(pattern_p) + 1) / 2
            blended = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (K, B, C, H, W)
            out = model(blended.flatten(0, 1)).float().view(k, batch, -1)
            ce = F.cross_entropy(out.flatten(0, 1), target.repeat_interleave(batch), reduction="none").view(k, batch).mean(1)
            norm = mask.flatten(1).sum(1)
            opt.zero_grad(set_to_none=True)
            (ce + cost * norm).sum().backward()
            opt.step()
            with torch.no_grad():
                acc = (out.argmax(-1) == target[:, None]).float().mean(1)
                better = (acc >= attack_threshold) & (norm < best_norm)
                best_norm = torch.where(better, norm, best_norm)
                best_mask[better] = mask[better]
                best_pattern[better] = pattern[better]
                best_success = torch.where(better, acc, best_success)
                acc_sum += acc
                if (step + 1) % patience == 0:
                    ok = acc_sum / patience >= attack_threshold
                    cost = torch.where(ok, cost * cost_multiplier, cost / cost_multiplier**1.5)
                    acc_sum.zero_()
    with torch.no_grad():
        reached = torch.isfinite(best_norm)
        last_mask = (torch.tanh(mask_p) + 1) / 2
        last_pattern = (torch.tanh(pattern_p) + 1) / 2
        masks = torch.where(reached[:, None, None, None], best_mask, last_mask)
        patterns = torch.where(reached[:, None, None, None], best_pattern, last_pattern)
        norms = masks.flatten(1).sum(1)
    return {
        "masks": masks[:, 0].cpu(),
        "patterns": patterns.cpu(),
        "norms": norms.cpu(),
        "reached": reached.cpu(),
        "success": torch.where(reached, best_success, acc).cpu(),
    }


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """MAD anomaly index of each value, signed: positive when smaller than the median."""
    x = norms.double().numpy()
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return torch.from_numpy((med - x) / max(mad, 1e-12)).float()


@register_defense
class NeuralCleanse(Defense):
    name = "neural_cleanse"
    kind = "model"

    class Params(DefenseParams):
        steps: int = Field(1000, ge=1, le=100_000, description="optimisation steps (each sees one clean batch)")
        batch_size: int = Field(32, ge=1, le=4096, description="clean images per step, blended with every label's trigger")
        lr: float = Field(0.1, gt=0, le=10, description="Adam step size on the tanh-parametrised mask and pattern")
        init_cost: float = Field(1e-3, gt=0, le=10, description="initial weight λ of the mask L1 norm")
        cost_multiplier: float = Field(1.5, gt=1, le=10, description="λ is multiplied / divided by this (÷ its 1.5th power)")
        patience: int = Field(10, ge=1, le=10_000, description="steps between λ updates")
        attack_threshold: float = Field(0.99, gt=0, le=1, description="attack success a reversed trigger must reach")
        anomaly_threshold: float = Field(2.0, gt=0, le=100, description="flag labels whose anomaly index exceeds this")
        mode: Literal["batched", "loop"] = Field("batched", description="all labels in one batch, or label by label")
        n_clean: int = Field(1000, ge=1, le=1_000_000, description="clean images to blend with")
        seed: int = Field(0, ge=0, description="seeds batches and initial patterns")

    def fit(self, model: nn.Module, data: ImageDataset) -> NeuralCleanse:
        """Reverse-engineer a trigger for every label of ``data`` and flag the anomalous ones."""
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        kw = dict(
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, init_cost=self.init_cost, cost_multiplier=self.cost_multiplier,
            patience=self.patience, attack_threshold=self.attack_threshold, seed=self.seed,
        )  # fmt: skip
        labels = list(range(data.num_classes))
        started = time.perf_counter()
        if self.mode == "batched":
            res = reverse_triggers(model, clean.images, labels, **kw)
        else:
            parts = [reverse_triggers(model, clean.images, [lab], **kw) for lab in labels]
            res = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        self.seconds_ = time.perf_counter() - started
        self.masks_, self.patterns_, self.norms_ = res["masks"], res["patterns"], res["norms"]
        self.reached_, self.success_ = res["reached"], res["success"]
        self.scores_ = anomaly_index(self.norms_)
        self.flagged_ = self.scores_ > self.anomaly_threshold
        self.flagged_labels_ = torch.nonzero(self.flagged_).flatten().tolist()
        self.evidence_ = {"mask_l1": [round(float(v), 3) for v in self.norms_], "reached": [bool(v) for v in self.reached_]}
        return self

    def trigger_of(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The recovered ``(mask (H, W), pattern (C, H, W))`` of ``label``."""
        return self.masks_[label], self.patterns_[label]

    def figures(self) -> Figures:
        """``<name>_trigger.png``: the recovered trigger of the most anomalous label;
        ``<name>_norms.png``: the reversed masks' L1 norms per label, flagged ones in red."""
        top = int(torch.argmax(self.scores_))
        mask, pattern = self.trigger_of(top)
        norms, scores, threshold = self.norms_.clone(), self.scores_.clone(), self.anomaly_threshold
        state = "flagged" if top in self.flagged_labels_ else "not flagged"
        title = f"label {top} ({state}, anomaly index {float(scores[top]):.2f})"
        return {
            f"{self.name}_trigger.png": lambda path: recovered_trigger_png(mask, pattern, path, title),
            f"{self.name}_norms.png": lambda path: mask_norms_png(norms, scores, path, threshold=threshold),
        }
