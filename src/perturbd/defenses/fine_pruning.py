"""Fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune dormant channels, then fine-tune.

A backdoor tends to live in channels of the last convolutional layer that clean inputs leave
dormant. The authors' code (kangliucn/Fine-pruning-defense @ 4f181c1d) ranks the channels of the
last convolutional layer by their mean activation over clean data (the layer's post-ReLU, pooled
output), prunes them in increasing order by zeroing their filters and bias, and hard-codes how
many (48 of 60 for faces, 250 of 256 for speech). The *paper's* rule, the default here, prunes
in that order while the clean validation accuracy stays within ``max_accuracy_drop`` (4 % in the
paper) of the unpruned model's; a fixed ``ratio`` of the channels is the option the code takes.
Fine-tuning on clean images follows (its epochs and learning rate are not in the code: ours).

What is pruned, on any architecture (:func:`last_representation`): the module whose output is
the last spatial (4-D) activation the head sees: after residual additions and any BatchNorm or
ReLU, before global pooling and flattening. It is found generically with forward hooks: the last
module (other than pooling, flattening, dropout and identity layers, and modules called more than
once per forward) to return a 4-D tensor (``layer4`` of ``preact_resnet18`` and ``tv:resnet18``,
the last ReLU of ``cnn28``). A channel is pruned by a persistent forward hook on that module
(:class:`ChannelMask`, ``out * mask``): pruned channels are exactly zero whatever precedes them
(a BatchNorm's shift, a residual addition) and stay zero while fine-tuning. Channels are ranked by
the mean of that very output over the clean images (the model's own activation, no added ReLU).

The clean images are split: the last ``validation`` share (at least one image) is held out for
the accuracy rule only; the rest ranks the channels and fine-tunes. The count is found by
bisection over the number pruned (accuracy falls as more dormant channels go, which bisection
assumes), about log₂(C) accuracy evaluations instead of C.

After ``fit``: ``model_`` (the repaired copy; it carries the mask as a forward hook, which its
``state_dict`` does not hold), ``layer_`` (module name), ``pruned_`` (channel indices),
``activation_`` (per channel), ``base_accuracy_`` and ``pruned_accuracy_`` (validation accuracy
unpruned and right after pruning), ``curve_`` (``[count, accuracy]`` pairs tried, by count),
``facts_`` (the layer, channels pruned of how many, the two accuracies: the report's metrics).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import fresh_copy, register_defense, take, trace_modules
from perturbd.defenses.fine_tuning import Tuned, TuningParams
from perturbd.errors import ConfigError
from perturbd.metrics import clean_accuracy
from perturbd.models import model_device

# modules that only pool, reshape or pass their input on: never the representation itself
PASS_THROUGH = (
    nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip


class ChannelMask:
    """Forward hook multiplying a module's output channels (dim 1) by ``keep`` (1 kept, 0 pruned)."""

    def __init__(self, channels: int) -> None:
        self.keep = torch.ones(channels)

    def __call__(self, module: nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor:
        return out * self.keep.to(out.device, out.dtype).view(1, -1, *([1] * (out.ndim - 2)))

    def prune(self, channels: torch.Tensor) -> None:
        """Prune exactly ``channels`` (the others are kept)."""
        self.keep = torch.ones_like(self.keep)
        self.keep[channels] = 0.0


@torch.no_grad()
def last_representation(model: nn.Module, images: torch.Tensor) -> tuple[str, nn.Module, int]:
    """``(name, module, channels)`` of the module whose output is the last 4-D activation of a
    forward pass of ``images`` (a few clean images), skipping :data:`PASS_THROUGH` layers and
    modules called more than once (see the module docstring)."""
    done: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    calls: Counter[str] = Counter()

    def note(name: str, module: nn.Module, out: object) -> None:
        calls[name] += 1
        done.append((name, module, out if isinstance(out, torch.Tensor) else None))

    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ConfigError(
            "fine_pruning prunes a layer through forward hooks, which a TorchScript model does not take; run it on its state dict (--arch)"
        )
    trace_modules(model, images, note)
    found = [(n, m, out) for n, m, out in done if calls[n] == 1 and not isinstance(m, PASS_THROUGH) and out is not None and out.ndim == 4]
    if not found:
        raise ConfigError(f"fine_pruning needs a model with a spatial (4-D) activation to prune; {type(model).__name__} has none")
    name, module, out = found[-1]
    return name, module, int(out.shape[1])


@torch.no_grad()
def channel_activation(model: nn.Module, module: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Mean of each output channel of ``module`` over ``images`` (and positions), ``(C,)`` float64."""
    if len(images) == 0:
        raise ConfigError("fine_pruning needs clean images to measure activations; got none")
    device = model_device(model)
    total: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        total.append(out.double().mean((2, 3)).sum(0).cpu())

    handle = module.register_forward_hook(hook)
    model.eval()
    try:
        for i in range(0, len(images), batch_size):
            model(to_float01(images[i : i + batch_size].to(device)))
    finally:
        handle.remove()
    return torch.stack(total).sum(0) / len(images)


@register_defense
class FinePruning(Tuned):
    name = "fine_pruning"
    kind = "mitigation"

    class Params(TuningParams):
        max_accuracy_drop: float = Field(
            0.04, ge=0, le=1, description="prune while validation accuracy stays within this of the unpruned (Liu et al.: 4 %)"
        )
        ratio: float | None = Field(None, ge=0, lt=1, description="prune this share of the channels instead (None: the accuracy rule)")
        validation: float = Field(0.2, gt=0, lt=1, description="share of the clean images held out to measure accuracy")

    def fit(self, model: nn.Module, data: ImageDataset) -> FinePruning:
        clean = take(data, self.n_clean)
        if len(clean) < 2:
            raise ConfigError(f"fine_pruning needs at least 2 clean images (some held out for accuracy), got {len(clean)}")
        self.clean_used_ = len(clean)
        n_val = min(len(clean) - 1, max(1, round(self.validation * len(clean))))
        rest = clean.subset(torch.arange(len(clean) - n_val))
        val = clean.subset(torch.arange(len(clean) - n_val, len(clean)))
        self.model_ = fresh_copy(model)
        self.layer_, module, channels = last_representation(self.model_, rest.images[:2])
        self.activation_ = channel_activation(self.model_, module, rest.images)
        order = torch.argsort(self.activation_, stable=True)
        mask = ChannelMask(channels)
        module.register_forward_hook(mask)
        curve: dict[int, float] = {}

        def accuracy(count: int) -> float:
            if count not in curve:
                mask.prune(order[:count])
                curve[count] = clean_accuracy(self.model_, val)
            return curve[count]

        self.base_accuracy_ = accuracy(0)
        count = int(self.ratio * channels) if self.ratio is not None else self._largest_within(accuracy, channels)
        self.pruned_accuracy_ = accuracy(count)
        mask.prune(order[:count])
        self.pruned_ = order[:count].sort().values.tolist()
        self.curve_ = [[c, curve[c]] for c in sorted(curve)]
        self.facts_ = {
            "layer": self.layer_, "channels": channels, "pruned": count, "validation_accuracy_unpruned": self.base_accuracy_,
            "validation_accuracy_pruned": self.pruned_accuracy_, "summary": f"pruned {count}/{channels} channels of {self.layer_}",
        }  # fmt: skip
        self.tune_model(rest, self.rng_seed())
        return self

    def _largest_within(self, accuracy: Callable[[int], float], channels: int) -> int:
        """The largest count whose validation accuracy is within ``max_accuracy_drop`` of none
        pruned, by bisection (``accuracy(count)`` evaluates and records one count)."""
        base = accuracy(0)
        max_drop: float = self.max_accuracy_drop

        def within(count: int) -> bool:
            return base - accuracy(count) <= max_drop + 1e-12

        if within(channels):
            return channels
        lo, hi = 0, channels  # within(lo), not within(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if within(mid) else (lo, mid)
        return lo
