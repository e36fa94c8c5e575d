"""Knowledge distillation into a fresh student on clean images: Yoshida and Fujino's setting.

What is implemented: a student of the same architecture with fresh weights (drawn from the
seed) learns the backdoored teacher's outputs on ``n_clean`` clean images only, with the
distillation loss of Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network"
(2015): ``α T² KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − α) CE(student, y)`` (the
T² keeps the soft term's gradients on the scale of the hard one). The trigger never appears in
that data, so the student has little reason to learn it; the price is the accuracy a student
reaches from few images.

Its use against backdoors, and what matches:

- Yoshida and Fujino, "Disabling backdoor and identifying poison data by using knowledge
  distillation in backdoor attacks on deep neural networks" (AISec 2020; and J. Signal Processing
  24(4), 2020): the defender distils the backdoored model (teacher) into a student with clean
  *unlabelled* images. That is this defence with ``alpha=1`` (no label term); the default
  ``alpha=0.9`` also uses the defender's labels, Hinton et al.'s mix. Their further steps,
  flagging training images where teacher and student disagree as poison and fine-tuning the
  student on the rest, are not implemented here.
- Li et al., "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural
  Networks" (ICLR 2021) is a different method: it fine-tunes the backdoored model on clean data
  to make a *teacher*, then distils the teacher's intermediate *attention maps* into the
  backdoored model itself (cross-entropy plus an attention loss). None of that is done here:
  this distils *logits* into a *fresh* student.

Training is the project's one loop (:func:`~perturbd.defenses.fine_tuning.tune`: SGD, cosine
schedule); its epochs and learning rate are ours.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import fresh_copy, register_defense, reinitialise, take
from perturbd.defenses.fine_tuning import Tuned, TuningParams


@register_defense
class Distillation(Tuned):
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
        t: float = self.temperature
        alpha: float = self.alpha

        def loss_fn(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = F.softmax(teacher(x).float() / t, 1)
            out = student(x).float()
            kd = F.kl_div(F.log_softmax(out / t, 1), soft, reduction="batchmean") * t * t
            return alpha * kd + (1 - alpha) * F.cross_entropy(out, y)

        seed = self.rng_seed()
        self.model_ = reinitialise(model, seed)
        self.tune_model(clean, seed, loss_fn)
        return self
