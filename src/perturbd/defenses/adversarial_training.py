"""Adversarial training (Madry et al., 2018) as a backdoor mitigation: fine-tune on PGD examples.

The backdoored model is fine-tuned on clean images replaced by their L∞ PGD adversarial examples
(radius ``epsilon`` in pixel units of 0–255, ``steps`` signed-gradient steps of ``step_size``,
random start in the ball), on the adversarial loss alone (``clean_weight = 0``), as Madry et al.
train. An invisible trigger is itself a small L∞ perturbation, so robustness at a radius at least
as large as its amplitude is expected to undo it; a 255-amplitude patch is far outside.

The defaults are Madry et al.'s MNIST setting: ε = 0.3 (76.5 levels), 40 steps of 0.01 (2.55
levels). The radius of a threat model depends on the data, and there is no one value for all:
for CIFAR-10 Madry et al. use ε = 8 levels, 7 steps of 2 levels, which a config gives as a
variant under its own name::

    {name: adversarial_training, label: adversarial_training_cifar, params: {epsilon: 8, steps: 7, step_size: 2}}

(a setting of this project, e.g. ε = 16 in 5 steps, is reported the same way under its own
label). Departures from the paper: it fine-tunes the given model on ``n_clean`` clean images for
a few epochs (:class:`~perturbd.defenses.fine_tuning.Tuned`) instead of training from scratch on
the whole set; ``step_size=None`` takes 2.5 ε / steps, a step size that scales with the radius.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import fresh_copy, register_defense, take
from perturbd.defenses.fine_tuning import Tuned, TuningParams


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step: float, gen: torch.Generator) -> torch.Tensor:
    """Untargeted L∞ PGD: ``x`` float [0, 1]; ``eps`` and ``step`` in [0, 1] units. Model left in eval."""
    model.eval()
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps
    adv = (x + noise).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() + step * grad.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    return adv.detach()


@register_defense
class AdversarialTraining(Tuned):
    name = "adversarial_training"
    kind = "mitigation"

    class Params(TuningParams):
        epsilon: float = Field(76.5, gt=0, le=255, description="L∞ radius, pixel units 0–255 (Madry et al.'s MNIST: 0.3 = 76.5)")
        steps: int = Field(40, ge=1, le=1000, description="PGD steps per batch (Madry et al.'s MNIST: 40)")
        step_size: float | None = Field(
            2.55, gt=0, le=255, description="PGD step, pixel units (Madry et al.'s MNIST: 0.01 = 2.55); None: 2.5 ε / steps"
        )
        clean_weight: float = Field(0.0, ge=0, le=1, description="weight of the clean loss beside the adversarial one")

    def fit(self, model: nn.Module, data: ImageDataset) -> AdversarialTraining:
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        eps = self.epsilon / 255.0
        step = (2.5 * self.epsilon / self.steps if self.step_size is None else self.step_size) / 255.0
        seed = self.rng_seed()
        gen = torch.Generator().manual_seed(seed)

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            adv = pgd_linf(net, x, y, eps, self.steps, step, gen)
            net.train()
            loss = F.cross_entropy(net(adv), y)
            if self.clean_weight:
                loss = (1 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(net(x), y)
            return loss

        self.tune_model(clean, seed, loss_fn)
        return self
