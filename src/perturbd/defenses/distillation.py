"""Knowledge distillation into a fresh student on clean data (Yoshida and Fujino, 2020; Li et al., 2021).

A student of the same architecture, with fresh weights, learns the backdoored teacher's softened
outputs (temperature ``temperature``) on ``n_clean`` clean images only. The trigger never appears
in that data, so the student has little reason to learn it; the price is the accuracy a student
reaches from few images. Loss: ``α T² KL(teacher_T ‖ student_T) + (1 − α) CE(student, y)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, fresh_copy, register_defense, reinitialise, take
from perturbd.defenses.fine_tuning import TuningParams, tune


@register_defense
class Distillation(Defense):
    name = "distillation"
    kind = "mitigation"

    class Params(TuningParams):
        epochs: int = Field(20, ge=1, le=1000, description="passes over the clean images")
        lr: float = Field(0.05, gt=0, le=10, description="initial SGD learning rate (cosine to 0)")
        temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T")
        alpha: float = Field(0.9, ge=0, le=1, description="weight of the distillation term (rest: labels)")

    def fit(self, model: nn.Module, data: ImageDataset) -> Distillation:
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        teacher = fresh_copy(model)
        for p in teacher.parameters():
            p.requires_grad_(False)
        t = self.temperature

        def loss_fn(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = F.softmax(teacher(x).float() / t, 1)
            out = student(x).float()
            kd = F.kl_div(F.log_softmax(out / t, 1), soft, reduction="batchmean") * t * t
            return self.alpha * kd + (1 - self.alpha) * F.cross_entropy(out, y)

        self.model_ = reinitialise(model, self.seed)
        self.losses_ = tune(self.model_, clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed, loss_fn=loss_fn, description=self.name)
        return self
