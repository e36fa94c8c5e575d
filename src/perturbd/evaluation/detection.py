"""Detection numbers shared by the evaluators: AUROC, TPR at a fixed FPR, the cell text, and the
seeded stratified sample of test images that input screening is measured on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from perturbd.data import stratified_indices
from perturbd.data.dataset import ImageDataset
from perturbd.metrics import Sources, attacked
from perturbd.seeding import derived_generator


def auroc(positive: torch.Tensor, scores: torch.Tensor) -> float | None:
    from sklearn.metrics import roc_auc_score  # here, not at the top: a run without defences never loads scikit-learn

    y = positive.numpy().astype(bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, scores.double().numpy()))


def tpr_at_fpr(positive: torch.Tensor, scores: torch.Tensor, fpr: float = 0.05) -> float | None:
    """The highest TPR over thresholds on ``scores`` whose FPR is at most ``fpr`` (None without both classes)."""
    from sklearn.metrics import roc_curve

    y = positive.numpy().astype(bool)
    if y.all() or not y.any():
        return None
    f, t, _ = roc_curve(y, scores.double().numpy())
    return float(np.max(t[f <= fpr + 1e-12]))


def detection_text(m: dict[str, Any]) -> str:
    """``AUROC 0.864 (TPR 0.00 / FPR 0.01 at its threshold; TPR 0.31 at 5 % FPR)``; with the
    FPR the threshold was set for (``frr_target``, input screens) beside the measured one:
    ``FPR 0.03 (target 0.01)``."""

    def num(key: str, fmt: str) -> str:
        return "n/a" if m.get(key) is None else format(m[key], fmt)

    target = f" (target {num('frr_target', '.2f')})" if "frr_target" in m else ""
    return (
        f"AUROC {num('auroc', '.3f')} (TPR {num('tpr', '.2f')} / FPR {num('fpr', '.2f')}{target} at its threshold; "
        f"TPR {num('tpr_at_5_fpr', '.2f')} at 5 % FPR)"
    )


def screened_sample(test: ImageDataset, target: int, limit: int, seed: int, sources: Sources = None) -> torch.Tensor:
    """Indices into ``test`` of a seeded random sample of at most ``limit`` images whose label is
    not ``target`` (and, given ``sources``, is one of them: :func:`perturbd.metrics.attacked`),
    stratified over those classes (sorted; ``derived_generator(seed, "strip-sample")``)."""
    others = torch.nonzero(attacked(test.labels, target, sources)).flatten()
    n = min(limit, len(others))
    pick = stratified_indices(test.labels[others], n, derived_generator(seed, "strip-sample"), test.num_classes)
    return others[pick]
