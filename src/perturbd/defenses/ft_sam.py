"""FT-SAM: fine-tuning with sharpness-aware minimisation (Zhu, Wei, Shen, Fan and Wu, "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization", ICCV 2023), as
BackdoorBench runs it (``defense/ft-sam.py`` with ``utils/defense_utils/sam``).

The backdoored model is fine-tuned on a small clean set, each step at the *worst* nearby weights:
the gradient ``g`` of the loss at ``w`` gives a perturbation ``e``; the gradient at ``w + e`` is
then applied at ``w``. Adaptive SAM (Kwon et al.'s ASAM, BackdoorBench's default: its
``--adaptive`` flag is ``store_false``) scales the step by the weights' size:
``e = ρ · w² ⊙ g / ‖|w| ⊙ g‖₂`` over all parameters (plain SAM: ``e = ρ g / ‖g‖₂``). The paper's
argument: the backdoor's neurons sit in a sharp region that SAM's perturbation, larger on large
weights, pushes the model out of, where plain fine-tuning at a small learning rate stays inside.
The loss is cross-entropy against labels smoothed by 0.1 (BackdoorBench's ``smooth_crossentropy``:
``1 − s`` on the label, ``s / (K − 1)`` on each other class; computed as cross-entropy, which
differs from its KL form by a constant: the same gradients). The second pass, at ``w + e``,
leaves BatchNorm's running statistics alone (its momentum set to 0, as BackdoorBench's
``disable_running_stats``), and the weights are then restored from a copy (BackdoorBench subtracts
``e`` again, which leaves rounding errors). ``model_`` is the tuned copy; the input model is untouched.

Clean-data budget: ``clean_share`` = 5 % of the defender's clean images (BackdoorBench's
``ratio: 0.05`` of the training set), or ``n_clean`` images when given.

Defaults: BackdoorBench's ``config/defense/ft-sam/cifar10.yaml``, as the issue asks: ρ = 2
(``rho_max = rho_min = 2``: constant), adaptive, label smoothing 0.1, 100 epochs, batch 256, SGD
lr 0.01 with momentum 0.9 and weight decay 5e-4 on a cosine schedule; its gradient decomposition
(``alpha``, GSAM) is 0 there and is not implemented here. Departures: BackdoorBench draws the
clean images class-balanced (``choose_by_class``) and augments them; here the first images of the
pre-shuffled clean set are used, unaugmented (as every mitigation here); its SGD is plain, ours
Nesterov (the project's one loop, :func:`perturbd.train.fit`, through
:func:`~perturbd.defenses.fine_tuning.tune`). The SAM step is expressed as a loss for that loop:
``loss_fn`` computes both gradients itself and returns the loss at ``w`` plus a term whose gradient
is the one at ``w + e`` (``Σ θ · g(w + e)`` less its value), so the loop's ``backward`` and
optimiser step apply exactly SAM's update. On a TorchScript model the BatchNorm layers cannot be
told apart, so the second pass also updates their running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import fresh_copy, register_defense
from perturbd.defenses.fine_tuning import ShareParams, Tuned, budget
from perturbd.train import LossFn

PERTURB_EPS = 1e-12  # added to the gradient norm (BackdoorBench's ``perturb_eps``)


def smooth_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy against targets with ``1 − smoothing`` on the label and
    ``smoothing / (K − 1)`` on each other class (BackdoorBench's ``smooth_crossentropy``)."""
    k = logits.shape[1]
    soft = torch.full_like(logits, smoothing / (k - 1)).scatter_(1, labels.unsqueeze(1), 1.0 - smoothing)
    return -(soft * F.log_softmax(logits, 1)).sum(1).mean()


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``model`` keep their running statistics (momentum 0) inside; restored after."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, kept, strict=True):
            m.momentum = momentum


def perturbation(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho: float, adaptive: bool) -> list[torch.Tensor]:
    """SAM's ascent step ``e`` per parameter: ``ρ g / ‖g‖`` or, ``adaptive``, ``ρ w² g / ‖|w| g‖``."""
    scaled = [p.abs() * g if adaptive else g for p, g in zip(params, grads, strict=True)]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
    scale = rho / (norm + PERTURB_EPS)
    return [g * scale * (p * p if adaptive else 1.0) for p, g in zip(params, grads, strict=True)]


def sam_loss(rho: float, adaptive: bool, smoothing: float) -> LossFn:
    """A ``loss_fn`` for :func:`perturbd.train.fit` whose gradient is SAM's (see the module docstring)."""

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = [p for p in net.parameters() if p.requires_grad]
        loss = smooth_cross_entropy(net(x).float(), y, smoothing)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            kept = [p.detach().clone() for p in params]
            for p, e in zip(params, perturbation(params, grads, rho, adaptive), strict=True):
                p.add_(e)
        try:
            with running_stats_frozen(net):
                worst = smooth_cross_entropy(net(x).float(), y, smoothing)
            at_worst = torch.autograd.grad(worst, params)
        finally:
            with torch.no_grad():  # back to w exactly (w + e − e is not, in floating point)
                for p, w in zip(params, kept, strict=True):
                    p.copy_(w)
        surrogate = torch.stack([(p * g).sum() for p, g in zip(params, at_worst, strict=True)]).sum()
        return loss.detach() + surrogate - surrogate.detach()  # value: the loss at w; gradient: at w + e

    return loss_fn


@register_defense
class FineTuningSAM(Tuned):
    name = "ft_sam"
    kind = "mitigation"

    class Params(ShareParams):
        epochs: int = Field(100, ge=1, le=1000, description="passes over the clean images (BackdoorBench: 100)")
        lr: float = Field(0.01, gt=0, le=10, description="initial SGD learning rate, cosine to 0 (BackdoorBench: 0.01)")
        batch_size: int = Field(256, ge=1, le=65536, description="images per step (BackdoorBench: 256)")
        rho: float = Field(2.0, ge=0, le=100, description="radius of SAM's weight perturbation (BackdoorBench: 2, adaptive)")
        adaptive: bool = Field(True, description="adaptive SAM (ASAM): the perturbation scaled by the weights")
        label_smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the loss (BackdoorBench: 0.1)")

    def fit(self, model: nn.Module, data: ImageDataset) -> FineTuningSAM:
        clean = budget(data, self.n_clean, self.clean_share)
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        self.tune_model(clean, self.rng_seed(), sam_loss(self.rho, self.adaptive, self.label_smoothing))
        self.facts_ = {"rho": self.rho, "adaptive": self.adaptive}
        return self
