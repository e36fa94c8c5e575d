"""Fine-tuning on a small clean set: the first mitigation a practitioner is told to try.

The backdoored model is trained further on ``n_clean`` clean images (SGD, cosine schedule, from a
learning rate well below the original's): catastrophic forgetting of the trigger is hoped for.
``model_`` is the tuned copy; the input model is untouched.

:func:`tune` is how every mitigation trains: the project's one training loop
(:func:`perturbd.train.fit`) with its own ``loss_fn``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, fresh_copy, register_defense, take
from perturbd.models import model_device
from perturbd.train import LossFn, fit


class TuningParams(DefenseParams):
    """Parameters shared by the mitigations that train on clean images."""

    n_clean: int = Field(1000, ge=1, le=10_000_000, description="clean images used")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the clean images")
    lr: float = Field(0.01, gt=0, le=10, description="initial SGD learning rate (cosine to 0)")
    batch_size: int = Field(64, ge=1, le=65536, description="images per step")
    seed: int | None = Field(None, ge=0, description="seeds shuffling (None: derived from the run seed)")


class ShareParams(DefenseParams):
    """:class:`TuningParams` whose clean-data budget is a share of the defender's clean images, as
    the papers state it (NAD, FT-SAM: 5 % of the training data), unless ``n_clean`` is given."""

    n_clean: int | None = Field(None, ge=1, le=10_000_000, description="clean images used (None: clean_share of those given)")
    clean_share: float = Field(0.05, gt=0, le=1, description="share of the defender's clean images used when n_clean is None")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the clean images")
    lr: float = Field(0.01, gt=0, le=10, description="initial SGD learning rate (cosine to 0)")
    batch_size: int = Field(64, ge=1, le=65536, description="images per step")
    seed: int | None = Field(None, ge=0, description="seeds shuffling (None: derived from the run seed)")


def budget(data: ImageDataset, n_clean: int | None, clean_share: float) -> ImageDataset:
    """The clean images a :class:`ShareParams` defence uses: the first ``n_clean`` of ``data`` (a
    pre-shuffled clean set), or the first ``clean_share`` of them (rounded, at least one)."""
    return take(data, n_clean if n_clean is not None else max(1, round(clean_share * len(data))))


def tune(
    model: nn.Module,
    clean: ImageDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    loss_fn: LossFn | None = None,
    description: str = "mitigation",
) -> list[float]:
    """Train ``model`` in place on ``clean`` and return the mean loss of each epoch.

    This is the project's one training loop, :func:`perturbd.train.fit`: SGD with Nesterov
    momentum 0.9, weight decay 5e-4, cosine schedule from ``lr`` to 0, no augmentation,
    drop-last batches shuffled by ``seed``, fp32, on the model's own device and the current
    number of CPU threads. ``loss_fn(net, x, y)`` (float ``x`` in [0, 1]) changes what is
    minimised (distillation, PGD); the default is cross-entropy.
    """
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine",
        augment="none", device=str(model_device(model)), threads=torch.get_num_threads(), precision="fp32",
    )  # fmt: skip
    return fit(model, clean, cfg, seed, loss_fn=loss_fn, description=description, lr_name=f"{description}.lr").losses


class Tuned(Defense):
    """Base of the mitigations that train ``model_`` on clean images with :class:`TuningParams`."""

    def tune_model(self, clean: ImageDataset, seed: int, loss_fn: LossFn | None = None) -> None:
        """Train ``model_`` on ``clean`` (:func:`tune` with this defence's epochs, lr and batch
        size); the mean loss of each epoch goes to ``losses_``."""
        self.losses_ = tune(
            self.model_,
            clean,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
            loss_fn=loss_fn,
            description=self.name,
        )


@register_defense
class FineTuning(Tuned):
    name = "fine_tuning"
    kind = "mitigation"
    Params = TuningParams

    def fit(self, model: nn.Module, data: ImageDataset) -> FineTuning:
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        self.tune_model(clean, self.rng_seed())
        return self
