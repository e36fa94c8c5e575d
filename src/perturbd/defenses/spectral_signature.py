"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018): dataset screening.

Per training label, the penultimate features are centred and their top right singular vector v
found; each sample's outlier score is its squared projection on v. Poisoned samples, relabelled
to the target, leave a strong direction in that class's features. The method removes the
``multiplier × ε × n_c`` highest-scoring samples of each class (Tran et al. remove 1.5 ε n, with
ε an upper bound on the poisoned fraction of a class).

Defaults are the paper's: ``components = 1`` (one singular vector), ``scoring = "centred"`` (the
algorithm as the paper writes it), ``multiplier = 1.5``. ``epsilon = 0.1`` is this project's
choice (the paper's ε is the attack's known bound: its experiments poison 5 % and 10 % of a
class); ε sets only ``flagged_``, never the scores or the AUROC.

Variants, each under its own name in a config (``{name: spectral_signature, label: ..., params:
{...}}``), none the default:

- ``components = k > 1``: the squared norm of the projection on the top k singular vectors. The
  poison's direction is not always the first (a BadNets patch on full MNIST with cnn28 lies on the
  second; experiments/README.md). A k chosen for a study is chosen on other seeds than it is
  scored on (experiments/tune_defenses.py).
- ``scoring = "authors"``: the authors' code (MadryLab/backdoor_data_poisoning @ c15096fd), as
  ART's ``SpectralSignatureDefense``: v is the top singular vector of the *centred* features, but
  the *uncentred* features are projected on it and ranked by the absolute value. The centred
  score is symmetric in the two groups a class splits into: when half of a class is poisoned both
  groups lie equally far from the class mean along v and the ranking is chance (dirty label at
  5 % and 10 % of CIFAR-10 poisons 33 % and 50 % of the target class); the uncentred projection
  ranks by where each sample lies along v from the origin instead, which separates the groups at
  any share when the poison lies farther out along v than the genuine images (with ReLU features,
  where an extra pattern adds activation). It is not the paper's text, so not the default.
- ``epsilon_source = "oracle"``: ε is the run's true poisoned share of the target class, set by
  the evaluation from the ground truth (a defender does not know it: an upper bound on what the
  method's own threshold can do).

``scores_`` are the scores divided by the class's median score (robust to the poison), so scores
of different classes compare for one global AUROC; ``flagged_`` marks the removed samples.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, ShareBoundParams, penultimate, register_defense, require_features
from perturbd.progress import stage


@register_defense
class SpectralSignature(Defense):
    name = "spectral_signature"
    kind = "dataset"

    class Params(ShareBoundParams):
        components: int = Field(1, ge=1, le=64, description="top singular vectors the score projects on (the paper: 1)")
        scoring: Literal["centred", "authors"] = Field(
            "centred",
            description="centred: the paper's squared projection of the centred features; "
            "authors: the authors' code, |projection| of the uncentred features",
        )
        multiplier: float = Field(1.5, gt=0, le=10, description="remove multiplier × epsilon × class size per class")
        batch_size: int = Field(512, ge=1, le=65536, description="images per forward pass")

    def fit(self, model: nn.Module, data: ImageDataset) -> SpectralSignature:
        """Score every image of ``data`` (the training set as trained on, labels as given)."""
        require_features(model, self.name)
        feats = penultimate(model, data.images, self.batch_size).double()
        scores = torch.zeros(len(data), dtype=torch.float64)
        flagged = torch.zeros(len(data), dtype=torch.bool)
        with stage(f"{self.name} classes", data.num_classes) as progress:
            for c in progress.over(range(data.num_classes)):
                idx = torch.nonzero(data.labels == c).flatten()
                if len(idx) < 2:
                    continue
                s = class_scores(feats[idx], self.components, self.scoring)
                scores[idx] = s / s.median().clamp_min(1e-12)
                remove = min(len(idx), int(self.multiplier * self.epsilon * len(idx)))
                if remove:
                    flagged[idx[torch.topk(s, remove).indices]] = True
        self.scores_ = scores.float()
        self.flagged_ = flagged
        return self


def class_scores(feats: torch.Tensor, components: int, scoring: str) -> torch.Tensor:
    """Outlier scores of one class's features ``(n, d)``: the squared norm of the projection on
    the top ``components`` right singular vectors of the centred features, of the centred
    features (``"centred"``) or of the features as they are (``"authors"``; for one component the
    square ranks as the absolute value does)."""
    centred = feats - feats.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred if scoring == "centred" else feats) @ vh[:components].T
    scores: torch.Tensor = (projected**2).sum(1)
    return scores
