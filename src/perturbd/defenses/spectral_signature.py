"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018): dataset screening.

Per training label, the penultimate features are centred and projected on their top right
singular vector; the squared projection is each sample's outlier score. With ``components = k > 1``
the score is the squared norm of the projection on the top k singular vectors: the paper's score is
``k = 1``, but the poison's direction is not always the first (a BadNets patch on full MNIST with
cnn28 lies on the second; measured in experiments/README.md). Poisoned samples,
relabelled to the target, leave a strong direction in that class's features. The method removes
the ``multiplier × epsilon × n_c`` highest-scoring samples of each class (Tran et al. remove
1.5 ε n, with ε an upper bound on the poisoned fraction of a class).

``scores_`` are the squared projections divided by the class's median score (robust to the poison), so scores of different
classes compare for one global AUROC; ``flagged_`` marks the removed samples.

The score is the paper's (squared projection of the *centred* feature). The authors' code
(MadryLab/backdoor_data_poisoning @ c15096fd) and ART's ``SpectralSignatureDefense`` take the
singular vector of the centred features too, but project the *uncentred* features on it and
rank by the absolute value; the ranking then depends on where the class mean lies along that
direction. The removal, ``1.5 ε n`` per class, is the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, penultimate, register_defense, require_features


@register_defense
class SpectralSignature(Defense):
    name = "spectral_signature"
    kind = "dataset"

    class Params(DefenseParams):
        epsilon: float = Field(0.1, gt=0, lt=1, description="upper bound on the poisoned fraction of a class")
        components: int = Field(1, ge=1, le=64, description="top singular vectors the score projects on (the paper: 1)")
        multiplier: float = Field(1.5, gt=0, le=10, description="remove multiplier × epsilon × class size per class")
        batch_size: int = Field(512, ge=1, le=65536, description="images per forward pass")

    def fit(self, model: nn.Module, data: ImageDataset) -> SpectralSignature:
        """Score every image of ``data`` (the training set as trained on, labels as given)."""
        require_features(model, self.name)
        feats = penultimate(model, data.images, self.batch_size).double()
        scores = torch.zeros(len(data), dtype=torch.float64)
        flagged = torch.zeros(len(data), dtype=torch.bool)
        for c in range(data.num_classes):
            idx = torch.nonzero(data.labels == c).flatten()
            if len(idx) < 2:
                continue
            centred = feats[idx] - feats[idx].mean(0, keepdim=True)
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            s = ((centred @ vh[: self.components].T) ** 2).sum(1)
            scores[idx] = s / s.median().clamp_min(1e-12)
            remove = min(len(idx), int(self.multiplier * self.epsilon * len(idx)))
            if remove:
                flagged[idx[torch.topk(s, remove).indices]] = True
        self.scores_ = scores.float()
        self.flagged_ = flagged
        return self
