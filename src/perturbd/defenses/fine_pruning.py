"""Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune dormant channels, then fine-tune.

A backdoor tends to live in channels of the last convolution that clean inputs leave dormant.
The mean activation of each output channel of the last ``nn.Conv2d`` (after the batch norm that
follows it, if any, and a ReLU) is measured on the clean images; the ``ratio`` least active
channels are pruned (their filters masked to zero with ``torch.nn.utils.prune``, kept at zero
during fine-tuning, then made permanent), and the model is fine-tuned on the same clean images.

After ``fit``: ``model_``, ``pruned_`` (channel indices), ``activation_`` (per channel),
``pruned_accuracy_`` (clean-set accuracy right after pruning, before fine-tuning).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch.nn.utils import prune

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, fresh_copy, register_defense, take
from perturbd.defenses.fine_tuning import TuningParams, tune
from perturbd.errors import ConfigError
from perturbd.metrics import clean_accuracy
from perturbd.models import model_device


def last_conv(model: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """The last ``nn.Conv2d`` in registration order and the module whose output to measure: the
    first batch norm with as many channels registered after it (before any other conv or linear
    layer; pooling may sit between), else the conv itself."""
    modules = list(model.modules())
    convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"fine_pruning needs a model with a convolution; {type(model).__name__} has none")
    conv = modules[convs[-1]]
    for after in modules[convs[-1] + 1 :]:
        if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels:
            return conv, after
        if isinstance(after, (nn.Conv2d, nn.Linear)):
            break
    return conv, conv


@torch.no_grad()
def channel_activation(model: nn.Module, probe: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Mean ReLU activation of each output channel of ``probe`` over ``images``, ``(C,)``."""
    device = model_device(model)
    total: torch.Tensor | None = None

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        nonlocal total
        s = F.relu(out).mean((2, 3)).sum(0).float().cpu()
        total = s if total is None else total + s

    if len(images) == 0:
        raise ConfigError("fine_pruning needs clean images to measure activations; got none")
    handle = probe.register_forward_hook(hook)
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(to_float01(images[i : i + batch_size].to(device)))
    finally:
        handle.remove()
    return total / len(images)  # type: ignore[operator]


@register_defense
class FinePruning(Defense):
    name = "fine_pruning"
    kind = "mitigation"

    class Params(TuningParams):
        ratio: float = Field(0.8, ge=0, lt=1, description="share of the last conv's channels pruned, most dormant first")

    def fit(self, model: nn.Module, data: ImageDataset) -> FinePruning:
        clean = take(data, self.n_clean)
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        conv, probe = last_conv(self.model_)
        self.activation_ = channel_activation(self.model_, probe, clean.images)
        count = int(self.ratio * conv.out_channels)
        self.pruned_ = torch.argsort(self.activation_)[:count].sort().values.tolist()
        keep = torch.ones(conv.out_channels, dtype=torch.bool)
        keep[self.pruned_] = False
        shape = (-1,) + (1,) * (conv.weight.ndim - 1)
        prune.custom_from_mask(conv, "weight", keep.view(shape).expand_as(conv.weight).to(conv.weight.device))
        if conv.bias is not None:
            prune.custom_from_mask(conv, "bias", keep.to(conv.bias.device))
        self.pruned_accuracy_ = clean_accuracy(self.model_, clean)
        self.losses_ = tune(self.model_, clean, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed, description=self.name)
        prune.remove(conv, "weight")
        if conv.bias is not None:
            prune.remove(conv, "bias")
        return self
