"""Adversarial neuron pruning, ANP (Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models", NeurIPS 2021): prune the neurons whose loss is most sensitive to an adversarial
perturbation of the weights.

Each neuron (a BatchNorm channel) gets a mask ``m ∈ [0, 1]`` (init 1) on its weight and a
multiplicative noise on its weight and bias: the layer computes ``γ (m + δ)`` and ``β (1 + ξ)``
instead of ``γ`` and ``β``, ``|δ|, |ξ| ≲ ε``. For ``steps`` iterations, on a batch drawn with
replacement from the clean images: the noise starts uniform in ``[−ε, ε]`` and takes
``noise_steps`` signed-gradient ascent steps of ``ε / noise_steps`` on the cross-entropy; then the
masks take one SGD step (momentum 0.9, ``lr``) on ``α · CE(masked) + (1 − α) · CE(masked + noise)``
and are clipped to [0, 1]. A neuron the backdoor needs is one the noise can exploit, and its mask
shrinks. Finally the neurons with mask ≤ ``threshold`` (or the ``number`` with the smallest masks)
are pruned in a fresh copy of the input model by zeroing their BatchNorm weight ``γ``.

Defaults, the authors' (csdongxian/ANP_backdoor @ ec7b179, ``optimize_mask_cifar.py``,
``prune_neuron_cifar.py``, ``recipe.md``) and the paper's where they agree: ε = 0.4, α = 0.2, one
noise step, mask lr 0.2, batch 128, 2000 iterations, pruning by threshold 0.2. Clean budget: 1 %
of the training set (``--val-frac 0.01``): ``n_clean = 500``, 1 % of CIFAR-10's 50 000 images.
Where the code and the paper differ, the code is followed, because it produced the paper's tables:

- the noise is not projected back onto ``[−ε, ε]`` after its ascent step (random start plus one
  step of ε can reach 2ε); the paper states the constraint ``‖δ‖∞ ≤ ε``;
- pruning zeroes ``γ`` only (``pruning()`` sets ``<layer>.weight``), so a pruned channel outputs
  its constant ``β``, not 0;
- the masks are optimised with the network in training mode (BatchNorm normalises with the
  batch's statistics, dropout is active), on a scratch copy; the pruned model keeps the input
  model's own running statistics.

The masks and the noise are applied by forward hooks on the layers (``out ↦ (out − β)(m + δ) +
β(1 + ξ)``, the same function as the authors' ``NoisyBatchNorm2d``), so no module is replaced and
any architecture with BatchNorm works, ``tv:`` and ``factory:`` models included. A model without
affine BatchNorm (``lenet5``) gets the same treatment on the output channels of its ``Conv2d``
layers (filter ``W (m + δ)``, bias ``b (1 + ξ)``; pruning zeroes the filter): not in the paper or
the code, which only perturb BatchNorm neurons. Hooks do not reach inside a TorchScript model,
which ANP refuses with one line. Random draws (batches, noise starts, dropout) come from ``seed``.

After ``fit``: ``model_`` (the pruned copy; the pruning is in its weights), ``layers_`` (the
names of the masked layers), ``masks_`` (per layer, the final mask of each neuron), ``pruned_``
(per layer, the pruned neuron indices), ``facts_`` (neurons pruned of how many, and how).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, fresh_copy, register_defense, take
from perturbd.errors import ConfigError
from perturbd.models import model_device


def neuron_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose channels ANP masks: every BatchNorm with an affine weight or, when there is
    none, every ``Conv2d`` (the documented fallback); a one-line error for TorchScript or neither."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ConfigError(
            "anp masks neurons through forward hooks, which a TorchScript model does not take; run it on its state dict (--arch)"
        )
    norms: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    if norms:
        return norms
    convs: list[tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"anp masks the neurons of BatchNorm or Conv2d layers; {type(model).__name__} has neither")
    return convs


class NeuronPerturbation:
    """Forward hook giving a layer's channels (dim 1) a mask and, while ``noisy``, weight and bias
    noise: ``out ↦ (out − b)(mask + noise) + b(1 + noise_bias)``, ``b`` the layer's bias (0 if none)."""

    def __init__(self, module: nn.Module) -> None:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)  # neuron_layers keeps layers with a weight
        channels, device = weight.shape[0], weight.device
        bias = module.bias
        self.bias = bias.detach() if isinstance(bias, torch.Tensor) else torch.zeros(channels, device=device)
        self.mask = torch.ones(channels, device=device, requires_grad=True)
        self.noise = torch.zeros(channels, device=device, requires_grad=True)
        self.noise_bias = torch.zeros(channels, device=device, requires_grad=True)
        self.noisy = False

    def __call__(self, module: nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor:
        def per_channel(v: torch.Tensor) -> torch.Tensor:
            return v.view(1, -1, *([1] * (out.ndim - 2)))

        b = per_channel(self.bias)
        if self.noisy:
            return (out - b) * per_channel(self.mask + self.noise) + b * per_channel(1.0 + self.noise_bias)
        return (out - b) * per_channel(self.mask) + b


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global generators (dropout draws from them) seeded with ``seed`` inside, restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@register_defense
class AdversarialNeuronPruning(Defense):
    name = "anp"
    kind = "mitigation"

    class Params(DefenseParams):
        n_clean: int = Field(
            500, ge=2, le=10_000_000, description="clean images used (Wu and Wang: 1 % of the training set; 500 of CIFAR-10)"
        )
        steps: int = Field(2000, ge=1, le=1_000_000, description="mask-optimisation iterations (Wu and Wang: 2000)")
        batch_size: int = Field(128, ge=2, le=65536, description="images per iteration, drawn with replacement (authors: 128)")
        lr: float = Field(0.2, gt=0, le=10, description="SGD learning rate of the masks, momentum 0.9 (authors: 0.2)")
        eps: float = Field(0.4, ge=0, le=10, description="relative bound ε of the neuron noise (Wu and Wang: 0.4); 0: no noise")
        noise_steps: int = Field(1, ge=1, le=100, description="signed-gradient steps of ε / noise_steps on the noise (authors: 1)")
        alpha: float = Field(0.2, ge=0, le=1, description="weight α of the natural loss; 1 − α weighs the noisy one (Wu and Wang: 0.2)")
        threshold: float = Field(0.2, ge=0, le=1, description="prune the neurons whose mask is at most this (Wu and Wang: 0.2)")
        number: int | None = Field(
            None, ge=0, le=10_000_000, description="prune this many neurons, smallest masks first, instead (None: threshold)"
        )
        seed: int | None = Field(None, ge=0, description="seeds batches, noise starts and dropout (None: derived from the run seed)")

    def fit(self, model: nn.Module, data: ImageDataset) -> AdversarialNeuronPruning:
        clean = take(data, self.n_clean)
        if len(clean) < 2:
            raise ConfigError(f"anp needs at least 2 clean images (BatchNorm normalises over a batch), got {len(clean)}")
        self.clean_used_ = len(clean)
        self.model_ = fresh_copy(model)
        layers = neuron_layers(self.model_)
        self.layers_ = [name for name, _ in layers]
        seed = self.rng_seed()
        device = model_device(model)
        with seeded(seed, device):
            masks = self._optimise_masks(fresh_copy(model), clean, torch.Generator().manual_seed(seed))
        self.masks_ = {name: m.detach().cpu() for name, m in zip(self.layers_, masks, strict=True)}
        values = torch.cat(list(self.masks_.values()))
        which = torch.cat([torch.full((len(m),), i) for i, m in enumerate(self.masks_.values())])
        index = torch.cat([torch.arange(len(m)) for m in self.masks_.values()])
        if self.number is not None:
            chosen = torch.argsort(values, stable=True)[: self.number]
            rule = f"the {self.number} smallest masks"
        else:
            chosen = torch.nonzero(values <= self.threshold).flatten()
            rule = f"mask ≤ {self.threshold:g}"
        self.pruned_ = {name: sorted(index[chosen][which[chosen] == i].tolist()) for i, name in enumerate(self.layers_)}
        with torch.no_grad():
            for (_, module), idx in zip(layers, self.pruned_.values(), strict=True):
                weight = module.weight
                assert isinstance(weight, torch.Tensor)  # neuron_layers keeps layers with a weight
                weight[torch.tensor(idx, dtype=torch.long, device=weight.device)] = 0.0
        count = len(chosen)
        self.facts_ = {
            "neurons": len(values), "pruned": count, "layers": len(self.layers_), "mask_min": float(values.min()),
            "summary": f"pruned {count}/{len(values)} neurons ({rule})",
        }  # fmt: skip
        return self

    def _optimise_masks(self, net: nn.Module, clean: ImageDataset, gen: torch.Generator) -> list[torch.Tensor]:
        """The authors' ``mask_train`` loop on ``net`` (a scratch copy), ``steps`` iterations; the
        final masks, one tensor per layer of :func:`neuron_layers`."""
        device = model_device(net)
        for p in net.parameters():
            p.requires_grad_(False)
        perturbations = []
        for _, module in neuron_layers(net):
            hook = NeuronPerturbation(module)
            module.register_forward_hook(hook)
            perturbations.append(hook)
        masks = [h.mask for h in perturbations]
        noises = [t for h in perturbations for t in (h.noise, h.noise_bias)]
        mask_opt = torch.optim.SGD(masks, lr=self.lr, momentum=0.9)
        eps: float = self.eps
        images, labels = clean.images, clean.labels
        net.train()

        def set_noisy(on: bool) -> None:
            for h in perturbations:
                h.noisy = on

        for _ in range(self.steps):
            pick = torch.randint(len(images), (self.batch_size,), generator=gen)
            x, y = to_float01(images[pick].to(device)), labels[pick].to(device)
            loss_rob: torch.Tensor | None = None
            if eps > 0:
                with torch.no_grad():
                    for t in noises:  # random start in [-ε, ε]
                        t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1).to(device) * eps)
                set_noisy(True)
                for _ in range(self.noise_steps):
                    grads = torch.autograd.grad(F.cross_entropy(net(x), y), noises)
                    with torch.no_grad():
                        for t, g in zip(noises, grads, strict=True):
                            t.add_(g.sign(), alpha=eps / self.noise_steps)
                loss_rob = F.cross_entropy(net(x), y)
            set_noisy(False)
            loss_nat = F.cross_entropy(net(x), y)
            # the authors drop the robust term when ε = 0 (and keep α on the natural one)
            loss = self.alpha * loss_nat + ((1 - self.alpha) * loss_rob if loss_rob is not None else 0.0)
            mask_opt.zero_grad()
            grads = torch.autograd.grad(loss, masks)
            for m, g in zip(masks, grads, strict=True):
                m.grad = g
            mask_opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0.0, 1.0)
        return masks
