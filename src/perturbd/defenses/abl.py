"""ABL: anti-backdoor learning, trains the victim on the poisoned set without the backdoor.

Li, Lyu, Koren, Lyu, Li and Ma, "Anti-Backdoor Learning: Training Clean Models on Poisoned Data",
NeurIPS 2021; the authors' code ``bboylyg/ABL``, and BackdoorBench's ``defense/abl.py``.

A training-time defence: it trains the victim itself, on the poisoned training set, so that the
model that comes out carries no backdoor. It rests on two observations: a backdoor is learned much
faster than the clean task (the poisoned images' loss falls towards 0 in the first epochs), and it
hangs on its trigger's link to the target label, which a few poisoned images suffice to unlearn.
Three phases, each in the project's one training loop (:func:`perturbd.train.fit`) with its own
``loss_fn``:

1. **Isolation** (``isolation_epochs``), from the victim's initial weights, with local gradient
   ascent (LGA): the loss is ``sign(ℓ − γ) · ℓ``, ℓ the batch's mean cross-entropy, so whenever ℓ
   falls below γ (0.5) the step climbs the gradient instead: the clean images, learned slowly, are
   held near γ, while the poisoned ones sink below it. Then one pass in eval mode over the
   training images, unaugmented, gives each its cross-entropy; the ``isolation_ratio`` (1 %) with
   the lowest loss are isolated (``isolated_``, positions in the training set, lowest first; ties
   keep the data's order).
2. **Fine-tuning** (``finetuning_epochs``): training goes on with the recipe's own loss on the
   other images.
3. **Unlearning** (``unlearning_epochs``): gradient ascent on the isolated images: the loss is −ℓ
   (mean cross-entropy), at the constant ``unlearning_lr``, which breaks the trigger's link to the
   target.

``model_`` is the model after the three phases; it uses no clean image (``clean_used_`` 0) and
needs what only a trainer has: the poisoned training set, the initial weights and the recipe
(:class:`~perturbd.defenses.base.TrainingDefense`). ``facts_`` holds the epochs each phase ran
and the number isolated; the evaluation adds the isolation precision against the ground truth.

Defaults. γ = 0.5 and the 1 % isolation ratio are the paper's and the code's. The authors train
on CIFAR-10 for 100 epochs in all: 20 of isolation (the paper's T_te and BackdoorBench's
``tuning_epochs``; the code's own default is 10), 60 of fine-tuning (code and BackdoorBench) and
the unlearning. Here the isolation and fine-tuning epochs scale with the victim's recipe: by default
20 % and 60 % of ``train.epochs`` (rounded, at least one each), so a 100-epoch recipe gets the
paper's 20 and 60 and the default 20-epoch recipe 4 and 12. The unlearning does not scale: its
job is to undo the trigger, not to train the task; its defaults are the authors' code's:
``lr_unlearning_init`` 5e-4, constant, batch 128, and 4 epochs (its ``unlearning_epochs`` = 5,
of which the first only evaluates). BackdoorBench ascends 20 epochs at 1e-4 instead.

Departures from the paper and the code:

- LGA is applied to the batch's mean loss, as both codes do (the paper writes the sign inside the
  expectation, per image); the code's default ``Flooding`` loss ``|ℓ − γ| + γ`` has the same
  gradient.
- Isolation and fine-tuning use the victim's recipe (optimiser, learning rate and its schedule run
  over each phase's epochs, momentum, weight decay, batch size, augmentation, precision), so that
  ABL's model and the plain one differ only by ABL; the authors use their own SGD (lr 0.1,
  Nesterov momentum 0.9, weight decay 1e-4, batch 128; 0.1 then 0.01 after 40 fine-tuning epochs)
  and add Cutout when fine-tuning. The unlearning uses the recipe's optimiser, momentum and weight
  decay with a constant lr, no augmentation, no label smoothing, warm-up or Lookahead, as the
  authors' unlearning does.
- Every phase drops the last partial batch of each epoch (the loop's fixed shapes); the authors
  keep it.
- A training set too small for one isolated image is refused in one line (the code would isolate
  none and unlearn nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, register_defense
from perturbd.errors import ConfigError
from perturbd.train import LossFn, fit, logits

#: the paper's shares of the 100 training epochs spent on isolation (20) and fine-tuning (60)
ISOLATION_SHARE, FINETUNING_SHARE = 0.2, 0.6


def lga_loss(gamma: float) -> LossFn:
    """Local gradient ascent: ``sign(ℓ − γ) · ℓ`` with ℓ the batch's mean cross-entropy (descent
    above γ, ascent below it; a ``loss_fn`` for :func:`perturbd.train.fit`)."""

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(net(x).float(), y)
        return torch.sign(loss.detach() - gamma) * loss

    return loss_fn


def ascent_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the batch: −(mean cross-entropy)."""
    return -F.cross_entropy(net(x).float(), y)


def lowest_losses(model: nn.Module, data: ImageDataset, count: int, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the ``count`` images of ``data`` with the lowest cross-entropy under
    ``model`` (eval mode, unaugmented), lowest first, ties in the data's order; and every image's loss."""
    losses = F.cross_entropy(logits(model, data.images, precision=precision), data.labels, reduction="none")
    return torch.sort(losses, stable=True).indices[:count], losses


def phase_epochs(epochs: int | None, share: float, recipe_epochs: int) -> int:
    """``epochs`` if given, else ``share`` of the recipe's epochs, rounded, at least one."""
    return epochs if epochs is not None else max(1, round(share * recipe_epochs))


@register_defense
class AntiBackdoorLearning(Defense):
    name = "abl"
    kind = "training"

    class Params(DefenseParams):
        isolation_epochs: int | None = Field(
            None, ge=1, le=1000, description="epochs of LGA training before isolating (None: 20 % of train.epochs; the paper: 20 of 100)"
        )
        isolation_ratio: float = Field(
            0.01, gt=0, le=0.5, description="share of the training images isolated, lowest loss first (paper: 0.01)"
        )
        gamma: float = Field(0.5, gt=0, le=100, description="LGA's loss floor γ: below it the step ascends (paper: 0.5)")
        finetuning_epochs: int | None = Field(
            None, ge=1, le=1000, description="epochs on the other images (None: 60 % of train.epochs; the authors: 60 of 100)"
        )
        unlearning_epochs: int = Field(4, ge=1, le=1000, description="epochs of gradient ascent on the isolated images (authors' code: 4)")
        unlearning_lr: float = Field(5e-4, gt=0, le=10, description="constant lr of the unlearning (authors' code: 5e-4)")
        unlearning_batch_size: int = Field(128, ge=1, le=65536, description="isolated images per unlearning step (authors' code: 128)")
        seed: int | None = Field(None, ge=0, description="seeds shuffling and augmentation (None: derived from the run seed)")

    def fit(self, model: nn.Module | Callable[[], nn.Module], data: ImageDataset, train: TrainConfig) -> AntiBackdoorLearning:
        """Train a model from ``model``'s weights (copied; or a function returning a fresh model)
        on the poisoned training set ``data`` with the recipe ``train``, as the module docstring says."""
        count = int(len(data) * self.isolation_ratio)
        if count < 1:
            raise ConfigError(
                f"abl.isolation_ratio {self.isolation_ratio} of {len(data)} training images isolates none; "
                f"raise it to at least {1 / max(1, len(data)):.3g}"
            )
        net = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
        seed = self.rng_seed()
        isolation = phase_epochs(self.isolation_epochs, ISOLATION_SHARE, train.epochs)
        finetuning = phase_epochs(self.finetuning_epochs, FINETUNING_SHARE, train.epochs)
        self.clean_used_ = 0
        self.losses_: dict[str, list[float]] = {}
        self.losses_["isolation"] = fit(
            net, data, train, seed, epochs=isolation, loss_fn=lga_loss(self.gamma), description="abl isolation"
        ).losses
        self.isolated_, self.isolation_losses_ = lowest_losses(net, data, count, train.precision)
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[self.isolated_] = False
        self.losses_["finetuning"] = fit(
            net, data.subset(torch.nonzero(rest).flatten()), train, seed, epochs=finetuning, description="abl fine-tuning"
        ).losses
        self.losses_["unlearning"] = fit(
            net,
            data.subset(self.isolated_),
            unlearning_recipe(train, self.unlearning_batch_size),
            seed,
            epochs=self.unlearning_epochs,
            lr=self.unlearning_lr,
            loss_fn=ascent_loss,
            description="abl unlearning",
            lr_name="abl.unlearning_lr",
        ).losses
        self.model_ = net.eval()
        self.facts_ = {
            "isolation_epochs": isolation,
            "finetuning_epochs": finetuning,
            "unlearning_epochs": self.unlearning_epochs,
            "isolated": count,
            "summary": f"{count} isolated",
        }
        return self


def unlearning_recipe(train: TrainConfig, batch_size: int) -> TrainConfig:
    """The recipe ``train`` as the unlearning runs it: constant lr, no warm-up, augmentation, label
    smoothing or Lookahead, ``batch_size`` images a step (the optimiser, momentum, weight decay,
    device and precision kept)."""
    plain = {"schedule": "constant", "warmup": 0.0, "augment": "none", "label_smoothing": 0.0, "lookahead": False}
    return train.model_copy(update={**plain, "batch_size": batch_size})
