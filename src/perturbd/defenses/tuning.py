"""The small training loop the mitigations share: SGD over an in-memory clean set.

Same conventions as :mod:`perturbd.train`: uint8 images moved to the device once, float [0, 1]
at the model's door, one seeded ``torch.Generator`` for shuffling, no DataLoader. A mitigation
passes ``loss_fn(model, x, y) -> loss`` to change what is minimised (distillation, PGD).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import model_device
from perturbd.errors import ConfigError

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def tune(
    model: nn.Module,
    data: ImageDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    loss_fn: LossFn = cross_entropy,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> list[float]:
    """Train ``model`` in place (SGD, cosine schedule) and return the mean loss of each epoch."""
    device = model_device(model)
    images, labels = data.images.to(device), data.labels.to(device)
    n = len(data)
    batch = min(batch_size, n)
    steps = max(1, n // batch)
    total = steps * epochs
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        running = 0.0
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            model.train()
            loss = loss_fn(model, to_float01(images[idx]), labels[idx])
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
            step += 1
        mean = running / steps
        if not math.isfinite(mean):
            raise ConfigError(f"mitigation training diverged (loss {mean}) at epoch {epoch + 1}; lower its lr (now {lr})")
        losses.append(mean)
    model.eval()
    return losses
