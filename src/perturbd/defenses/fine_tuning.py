"""Fine-tuning on a small clean set: the first mitigation a practitioner is told to try.

The backdoored model is trained further on ``n_clean`` clean images (SGD, cosine schedule, from a
learning rate well below the original's): catastrophic forgetting of the trigger is hoped for.
``model_`` is the tuned copy; the input model is untouched.
"""

from __future__ import annotations

import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, fresh_copy, register_defense, take
from perturbd.defenses.tuning import tune


class TuningParams(DefenseParams):
    """Parameters shared by the mitigations that train on clean images."""

    n_clean: int = Field(1000, ge=1, le=10_000_000, description="clean images used")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the clean images")
    lr: float = Field(0.01, gt=0, le=10, description="initial SGD learning rate (cosine to 0)")
    batch_size: int = Field(64, ge=1, le=65536, description="images per step")
    seed: int = Field(0, ge=0, description="seeds shuffling")


@register_defense
class FineTuning(Defense):
    name = "fine_tuning"
    kind = "mitigation"
    Params = TuningParams

    def fit(self, model: nn.Module, data: ImageDataset) -> FineTuning:
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        self.losses_ = tune(self.model_, clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed)
        return self
