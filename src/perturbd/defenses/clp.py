"""Channel Lipschitzness-based pruning, CLP (Zheng, Tang, Li and Liu, "Data-free Backdoor Removal
based on Channel Lipschitzness", ECCV 2022): prune the channels whose weights alone say they can
amplify a small input change the most. Data-free: no clean image is used (``clean_used_ = 0``).

For output channel k of a convolution followed by BatchNorm, the upper bound of the channel's
Lipschitz constant (UCLC) is ``σ_max(W_k) · |γ_k| / √(running_var_k + ε)``: the largest singular
value of the channel's filter reshaped to ``(in_channels / groups, kh·kw)``, times the absolute
BatchNorm scale. (The paper calls it an upper bound; as computed, by the authors too, it ranks
channels rather than bounds one output position, which the flattened filter's norm would.)
Within each layer the channels whose bound exceeds ``mean + u · std`` of the
layer's bounds (``std`` with Bessel's correction, as ``torch.std``) are pruned by zeroing the
BatchNorm's weight and bias, so the channel's output is exactly 0. The authors' code
(rkteddy/channel-Lipschitzness-based-pruning @ 5209c83, ``defense.py::CLP``) does the same with
``u = 3`` (``test.py``), the default here. The bounds of a layer are computed in one batched call
(``torch.linalg.matrix_norm(ord=2)`` over the channels), not one SVD per channel.

Departures from the authors' code, each because it states the paper's definition on more
architectures than the ResNet the code was written for (its README asks users to adapt it):

- Which convolution a BatchNorm scales is found by tracing one forward pass of a zero image with
  forward hooks: the BatchNorm whose input is a convolution's output, directly or through
  channel-wise layers that are 1-Lipschitz per channel (max or average pooling, ReLU, dropout,
  identity: :data:`CHANNELWISE`), so ``cnn28``'s conv → max-pool → BatchNorm pairs as it should.
  The code pairs each BatchNorm with the last ``Conv2d`` *registered* before it, which in a
  pre-activation ResNet pairs a BatchNorm that reads a residual sum with an unrelated conv.
- A convolution whose output reaches no BatchNorm that way (LeNet, a BatchNorm after a residual
  sum, a BatchNorm without running statistics) is bounded by ``σ_max(W_k)`` alone (the paper's
  bound with the identity for the normalisation) and pruned by zeroing its filter and bias.
  The code only looks at convolutions followed by a BatchNorm.
- The BatchNorm scale is ``|γ| / √(var + ε)``, what the layer computes; the code omits ``ε``.
- A layer with fewer than two channels has no spread and is left alone.

The trace runs on the model's own device, in eval mode, on two zero images of the data's shape:
no clean image is read. Forward hooks do not reach inside a TorchScript model, so CLP refuses one
with one line (run it on the state dict with ``--arch``).

After ``fit``: ``model_`` (the pruned copy; the pruning is in its weights, so its ``state_dict``
holds it), ``bounds_`` (per convolution name, the UCLC of each channel, float64),
``batchnorm_`` (per convolution name, the BatchNorm it pairs with, or None), ``pruned_`` (per
convolution name, the pruned channel indices), ``facts_`` (channels pruned of how many, in how
many layers: the report's metrics).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, fresh_copy, register_defense
from perturbd.errors import ConfigError
from perturbd.models import model_device

# layers that act on each channel separately and are 1-Lipschitz on it: a conv's bound holds through them
CHANNELWISE = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity,
    nn.Dropout, nn.Dropout2d,
)  # fmt: skip


@torch.no_grad()
def conv_batchnorm_pairs(model: nn.Module, image_shape: tuple[int, ...]) -> dict[str, str | None]:
    """Each ``Conv2d``'s name → the name of the BatchNorm that normalises its output (directly or
    through :data:`CHANNELWISE` layers) or None, from one forward pass of two zero images."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ConfigError(
            "clp pairs convolutions and BatchNorms by forward hooks, which TorchScript does not take; run it on its state dict (--arch)"
        )
    source: dict[int, str] = {}  # id of a live tensor → the conv whose channels it still carries
    alive: list[torch.Tensor] = []  # keeps every traced tensor alive, so no id is reused
    pairs: dict[str, str | None] = {}
    calls: Counter[str] = Counter()

    def note(name: str, module: nn.Module, inputs: tuple[object, ...], out: object) -> None:
        calls[name] += 1
        if not isinstance(out, torch.Tensor):
            return
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        carried = source.get(id(x)) if x is not None else None
        if isinstance(module, nn.Conv2d):
            pairs.setdefault(name, None)
            source[id(out)] = name
        elif isinstance(module, nn.BatchNorm2d) and carried is not None:
            if module.track_running_stats and module.running_var is not None and pairs[carried] is None:
                pairs[carried] = name
        elif isinstance(module, CHANNELWISE) and carried is not None:
            source[id(out)] = carried
        alive.append(out)

    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=name: note(n, mod, inp, out))
        for name, m in model.named_modules()
        if m is not model and isinstance(m, (nn.Conv2d, nn.BatchNorm2d, *CHANNELWISE))
    ]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, *image_shape, device=model_device(model)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not pairs:
        raise ConfigError(f"clp prunes the channels of Conv2d layers; {type(model).__name__} has none")
    # a module called twice per forward (shared weights) has no single input: bounded alone
    return {conv: (bn if bn is not None and calls[bn] == 1 else None) for conv, bn in pairs.items()}


@torch.no_grad()
def channel_bounds(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """The UCLC of each output channel, ``(C_out,)`` float64 on the CPU: ``σ_max`` of the channel's
    filter as an ``(in_channels / groups, kh·kw)`` matrix, times ``|γ| / √(running_var + ε)``."""
    w = conv.weight.detach().double().cpu()
    norms: torch.Tensor = torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)
    if bn is not None:
        assert bn.running_var is not None  # conv_batchnorm_pairs pairs tracked BatchNorms only
        scale = 1.0 / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double().cpu()
        norms = norms * scale.abs()
    return norms


def outliers(bounds: torch.Tensor, u: float) -> torch.Tensor:
    """Indices of the bounds above ``mean + u · std`` (Bessel-corrected std); none below 2 channels."""
    if len(bounds) < 2:
        return torch.empty(0, dtype=torch.long)
    return torch.nonzero(bounds > bounds.mean() + u * bounds.std()).flatten()


@register_defense
class ChannelLipschitzPruning(Defense):
    name = "clp"
    kind = "mitigation"

    class Params(DefenseParams):
        u: float = Field(3.0, ge=0, le=100, description="prune channels whose bound exceeds the layer's mean + u·std (Zheng et al.: 3)")

    def fit(self, model: nn.Module, data: ImageDataset) -> ChannelLipschitzPruning:
        """Prune ``model``'s copy; ``data`` gives only the image shape (no image is read)."""
        self.clean_used_ = 0
        self.model_ = fresh_copy(model)
        modules = dict(self.model_.named_modules())
        self.batchnorm_ = conv_batchnorm_pairs(self.model_, tuple(data.image_shape))
        self.bounds_: dict[str, torch.Tensor] = {}
        self.pruned_: dict[str, list[int]] = {}
        for conv_name, bn_name in self.batchnorm_.items():
            conv = modules[conv_name]
            bn = modules[bn_name] if bn_name is not None else None
            assert isinstance(conv, nn.Conv2d) and (bn is None or isinstance(bn, nn.BatchNorm2d))
            bounds = channel_bounds(conv, bn)
            index = outliers(bounds, self.u)
            self.bounds_[conv_name] = bounds
            self.pruned_[conv_name] = index.tolist()
            with torch.no_grad():
                # the authors zero the BatchNorm's weight and bias; an unpaired conv (or one whose
                # BatchNorm has no affine weights) has its filter and bias zeroed instead
                target = bn if bn is not None and bn.weight is not None else conv
                target.weight[index.to(target.weight.device)] = 0.0
                if target.bias is not None:
                    target.bias[index.to(target.bias.device)] = 0.0
        channels = sum(len(b) for b in self.bounds_.values())
        pruned = sum(len(p) for p in self.pruned_.values())
        layers = sum(1 for p in self.pruned_.values() if p)
        self.facts_ = {
            "channels": channels, "pruned": pruned, "layers": len(self.bounds_), "layers_pruned": layers,
            "summary": f"pruned {pruned}/{channels} channels in {layers}/{len(self.bounds_)} conv layers",
        }  # fmt: skip
        return self
