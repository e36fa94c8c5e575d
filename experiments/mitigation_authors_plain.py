"""NAD, ANP, I-BAU, CLP and FT-SAM as their authors' code runs them, in plain PyTorch, against
perturbd's defences on one small case: an independent check of ``perturbd.defenses.{nad, anp,
ibau, clp, ft_sam}`` (issue 42, "Cross-checked, each").

The case: a BadNets patch (perturbd's ``patch`` trigger at amplitude 255, 5 % of the training set
relabelled to class 0) planted in ``cnn28`` on the embedded ``mnist5k`` (4,000 training and 1,000
test digits), 10 epochs. From that one backdoored model, the same clean images (the first ``n`` of
the defender's set: the training images the attacker did not touch, in a seeded order) and the
same seed, each mitigation runs twice: perturbd's (``build_defense(...).fit``) and a plain one
written here from a reading of the authors' code, which imports no perturbd defence code (the
model, data, trigger and the metrics come from perturbd). Both are scored alike: clean accuracy,
ASR and R-Acc (triggered non-target test images classified as their true label) before and after,
BackdoorBench's DER, and the wall time.

The plain versions follow the authors' code paths, their optimisers and schedules included, with
perturbd's parameter values for what both share (budgets, epochs, batch sizes, ε, ρ, β …, see
:data:`SETTINGS`):

- CLP: rkteddy/channel-Lipschitzness-based-pruning @ 5209c83, ``defense.py::CLP`` line for line
  (each BatchNorm paired with the last ``Conv2d`` registered before it, ``torch.svd`` per
  channel, ``running_var.sqrt()`` without ε, float32). Data-free and deterministic: the pruned
  channels must equal perturbd's exactly.
- ANP: csdongxian/ANP_backdoor @ ec7b179: the model's BatchNorms swapped for their
  ``NoisyBatchNorm2d``, ``optimize_mask_cifar.py::mask_train`` (noise by an SGD optimiser on
  ``−CE`` with signed gradients, masks by SGD with momentum, training mode, batches drawn with
  replacement by a ``RandomSampler``), the masks written with 4 decimals as ``save_mask_scores``
  does, and ``prune_neuron_cifar.py``'s pruning by threshold (γ zeroed in the original model).
- I-BAU: YiZeng623/I-BAU @ d4bfa52, ``defense.py`` with ``hypergrad.py::fixed_point``: the inner
  loss on the *first* batch, ``int(n · 0.01)`` perturbed images drawn by ``random.sample``, the
  fixed-point loop with its 1e-10 tolerance, Adam, eval mode.
- NAD: bboylyg/NAD @ f17b713, ``main.py``: the teacher fine-tuned with the same loop at β = 0 (its
  README), the student trained on CE + Σ β · AT, SGD with Nesterov momentum and weight decay 1e-4,
  ``adjust_learning_rate`` (0.1 for two epochs, then 0.01), every image of the shuffled set per
  epoch (no drop-last). cnn28 has two conv blocks where their WRN-16-1 has three groups: the two
  blocks' outputs are distilled with β2, β3 (perturbd picks the same two layers and betas).
- FT-SAM: SCLBD/BackdoorBench @ f02e353, ``defense/ft-sam.py`` with
  ``utils/defense_utils/sam``: SGD (momentum 0.9, weight decay 5e-4, not Nesterov) wrapped by
  their SAM step (adaptive, ρ constant, perturb, second pass with BatchNorm momentum 0, subtract
  ``e``), ``CosineAnnealingLR(T_max=100)`` stepped after every *batch*, smoothed cross-entropy in
  its KL form, every image per epoch.

Besides each method at its defaults, :data:`VARIANTS` adds diagnostic rows (the plain side run
with perturbd's documented departures — its random draws, schedule or choices — so that what
remains is arithmetic, and the largest weight difference says how much) and rows at settings
where perturbd's defence has an effect on this backdoor.

Neither side augments (the authors crop and flip CIFAR-10; these are digits) and both read the
same clean images (BackdoorBench draws FT-SAM's class-balanced). Seeded: the same seed gives the
same numbers on the same machine and thread count. The JSON and a markdown table go to
``--out`` (default ``experiments/results/mitigation-crosscheck``), headed by the command, the code
and the machine; the markdown explains each method's differences.

    python experiments/mitigation_authors_plain.py                      # every method, the small case
    python experiments/mitigation_authors_plain.py --method clp anp     # some of them
    python experiments/mitigation_authors_plain.py --tiny --threads 1   # seconds: the test's case
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from perturbd.config import DataConfig, PoisonConfig, TrainConfig, TriggerConfig
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses import build_defense
from perturbd.errors import ConfigError, exit_code
from perturbd.evaluation import defender_clean_set
from perturbd.metrics import clean_accuracy, defense_effectiveness_rating, triggered_outcome
from perturbd.models import get_model
from perturbd.poisoning import poison_dataset
from perturbd.runs.experiment import environment
from perturbd.runs.rundir import write_json
from perturbd.train import fit
from perturbd.triggers import Trigger, TriggerContext, build_trigger

METHODS = ("clp", "anp", "nad", "ibau", "ft_sam")
OUT = Path("experiments/results/mitigation-crosscheck")
NAME = "mitigation_authors_plain"

#: the planted backdoor: data, model, trigger, poison and the victim's training
CASE: dict[str, Any] = {
    "data": "mnist5k", "train_limit": None, "test_limit": None, "arch": "cnn28", "trigger": "patch", "amplitude": 255.0,
    "rate": 0.05, "target": 0, "epochs": 10, "batch_size": 64, "lr": 0.05,
}  # fmt: skip
#: the test's case: a quarter of the data, 4 epochs (the backdoor is learned all the same)
TINY_CASE = CASE | {"train_limit": 1000, "test_limit": 300, "epochs": 4, "rate": 0.1}

#: per method, the parameters both implementations run with, in perturbd's names (``n_clean``:
#: the first images of the defender's clean set; NAD and FT-SAM: 5 % of it, as their papers)
SETTINGS: dict[str, dict[str, Any]] = {
    "clp": {"u": 3.0},
    "anp": {"n_clean": 500, "steps": 2000, "batch_size": 128, "lr": 0.2, "eps": 0.4, "noise_steps": 1, "alpha": 0.2, "threshold": 0.2},
    "nad": {"share": 0.05, "lr": 0.01, "epochs": 20, "teacher_epochs": 10, "batch_size": 64, "betas": [500.0, 1000.0, 1000.0], "p": 2.0},
    "ibau": {
        "n_clean": 500, "rounds": 5, "fixed_point_steps": 5, "lr": 0.001, "batch_size": 100, "inner_lr": 0.1, "search_lr": 10.0,
        "reg": 0.001, "perturbed_share": 0.01,
    },
    "ft_sam": {"share": 0.05, "epochs": 100, "batch_size": 256, "lr": 0.01, "rho": 2.0, "adaptive": True, "label_smoothing": 0.1},
}  # fmt: skip
#: rows beyond each method's defaults (label → method, what changes), of two kinds. Diagnostics:
#: the plain side with perturbd's departures (its draws, schedule or choices) and perturbd's side
#: the defaults' row, so that what remains between them is the arithmetic. Effects: settings at
#: which perturbd's defence does something to this backdoor, so that the two are compared on an
#: effect (CLP at u = 1 prunes channels in both cnn28 layers; u = 3 prunes none there).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "clp u=1": ("clp", {"u": 1.0}),
    "anp, plain with perturbd's draws": ("anp", {"same_draws": True}),
    "nad, plain on perturbd's schedule": ("nad", {"perturbd_schedule": True}),
    "ibau, plain with perturbd's choices": ("ibau", {"perturbd_choices": True}),
    "ft_sam, plain on perturbd's schedule": ("ft_sam", {"perturbd_schedule": True}),
    "nad β=20000": ("nad", {"betas": [20000.0, 20000.0]}),
    "ibau lr=0.005": ("ibau", {"lr": 0.005}),
    "ft_sam lr=0.05": ("ft_sam", {"lr": 0.05}),
}
#: settings only the plain side reads (perturbd's parameters have no such names)
PLAIN_ONLY = ("share", "same_draws", "perturbd_schedule", "perturbd_choices")
TINY_SETTINGS: dict[str, dict[str, Any]] = {
    "clp": {},
    "anp": {"n_clean": 100, "steps": 20, "batch_size": 32},
    "nad": {"share": 0.1, "epochs": 2, "teacher_epochs": 1},
    "ibau": {"n_clean": 100, "rounds": 1, "batch_size": 50},
    "ft_sam": {"share": 0.1, "epochs": 3, "batch_size": 64},
}
#: what the authors' code does where perturbd departs, used by the plain versions only
AUTHORS: dict[str, dict[str, Any]] = {
    "nad": {"lr": 0.1, "lr_after_two_epochs": 0.01, "weight_decay": 1e-4, "nesterov": True},
    "ft_sam": {"cosine_t_max_steps": 100, "weight_decay": 5e-4, "nesterov": False, "perturb_eps": 1e-12},
    "anp": {"print_every": 500, "mask_decimals": 4},
    "ibau": {"tolerance": 1e-10},
}

# --------------------------------------------------------------------------- the planted case


class Case:
    """The backdoored model, its trigger, the test set and the defender's clean images."""

    def __init__(self, spec: dict[str, Any], seed: int) -> None:
        split = load_data(DataConfig(name=spec["data"], train_limit=spec["train_limit"], test_limit=spec["test_limit"]), seed)
        shape = split.train.image_shape
        self.spec, self.test, self.target = spec, split.test, int(spec["target"])
        self.trigger: Trigger = build_trigger(
            TriggerConfig(kind=spec["trigger"], amplitude=spec["amplitude"]), TriggerContext(shape, seed, self.target)
        )
        poisoned = poison_dataset(split.train, self.trigger, PoisonConfig(rate=spec["rate"], target=self.target), seed)
        torch.manual_seed(seed)
        self.model = get_model(spec["arch"], shape, split.train.num_classes)
        cfg = TrainConfig(epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"], device="cpu")
        start = time.perf_counter()
        fit(self.model, poisoned.dataset, cfg, seed)
        self.train_seconds = time.perf_counter() - start
        self.model.eval()
        self.poisoned = len(poisoned.indices)
        self.train_images = len(poisoned.dataset)
        self.clean = defender_clean_set(poisoned.dataset, poisoned.indices, seed)
        self.before = self.score(self.model)

    def score(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        asr, racc = triggered_outcome(model, self.test, self.trigger, self.target)
        return {"accuracy": clean_accuracy(model, self.test), "asr": asr, "robust_accuracy": racc}

    def first(self, n: int) -> ImageDataset:
        return self.clean.subset(torch.arange(min(n, len(self.clean))))


def clean_count(case: Case, params: dict[str, Any]) -> int:
    """``n_clean``, or the share of the defender's clean images (rounded, at least one)."""
    return int(params["n_clean"]) if "n_clean" in params else max(1, round(params["share"] * len(case.clean)))


# --------------------------------------------------------------------------- CLP (plain)


@torch.no_grad()
def plain_clp(net: nn.Module, u: float) -> dict[str, list[int]]:
    """The authors' ``CLP(net, u)`` on ``net`` in place; the pruned channels per convolution (the
    conv registered last before each BatchNorm, which is how their code pairs them)."""
    params = net.state_dict()
    pruned: dict[str, list[int]] = {}
    conv: nn.Conv2d | None = None
    conv_name = ""
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert conv is not None and m.running_var is not None, "their code: a conv precedes every BatchNorm"
            std = m.running_var.sqrt()
            weight = m.weight
            channel_lips = []
            for idx in range(weight.shape[0]):
                w = conv.weight[idx].reshape(conv.weight.shape[1], -1) * (weight[idx] / std[idx]).abs()
                channel_lips.append(torch.svd(w.cpu())[1].max())
            lips = torch.Tensor(channel_lips)
            index = torch.where(lips > lips.mean() + u * lips.std())[0]
            params[name + ".weight"][index] = 0
            params[name + ".bias"][index] = 0
            pruned[conv_name] = index.tolist()
        elif isinstance(m, nn.Conv2d):
            conv, conv_name = m, name
    net.load_state_dict(params)
    return pruned


# --------------------------------------------------------------------------- ANP (plain)


class NoisyBatchNorm2d(nn.BatchNorm2d):
    """Their ``models/anp_batchnorm.py``: a BatchNorm whose weight is ``γ (mask + noise)`` and bias
    ``β (1 + noise_bias)`` while perturbed, ``γ · mask`` and ``β`` otherwise."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps, momentum)
        self.neuron_mask = nn.Parameter(torch.ones(num_features))
        self.neuron_noise = nn.Parameter(torch.zeros(num_features))
        self.neuron_noise_bias = nn.Parameter(torch.zeros(num_features))
        self.is_perturbed = False

    def reset(self, rand_init: bool, eps: float) -> None:
        with torch.no_grad():
            if rand_init:
                self.neuron_noise.uniform_(-eps, eps)
                self.neuron_noise_bias.uniform_(-eps, eps)
            else:
                self.neuron_noise.zero_()
                self.neuron_noise_bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_perturbed:
            coeff_weight, coeff_bias = self.neuron_mask + self.neuron_noise, 1.0 + self.neuron_noise_bias
        else:
            coeff_weight, coeff_bias = self.neuron_mask, torch.ones_like(self.neuron_noise_bias)
        average = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight * coeff_weight, self.bias * coeff_bias, self.training, average, self.eps
        )


def noisy_copy(net: nn.Module) -> tuple[nn.Module, list[tuple[str, NoisyBatchNorm2d]]]:
    """A copy of ``net`` with every BatchNorm2d replaced by :class:`NoisyBatchNorm2d` (their
    ``norm_layer=models.NoisyBatchNorm2d`` with the checkpoint loaded), and those layers by name."""
    out = copy.deepcopy(net)
    noisy = []
    for name, m in list(out.named_modules()):
        if type(m) is nn.BatchNorm2d:
            new = NoisyBatchNorm2d(m.num_features, m.eps, m.momentum)
            new.load_state_dict(m.state_dict(), strict=False)
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, new)
            noisy.append((name, new))
    return out, noisy


def plain_anp(net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Their mask optimisation, then pruning by threshold; the pruned copy and the masks. With
    ``s["same_draws"]`` the batches and noise starts are drawn as perturbd draws them (one
    generator; not the authors' RandomSampler and global generator): a diagnostic, so that the
    two differ only in their arithmetic."""
    torch.manual_seed(seed)  # their noise starts draw from the global generator (init.uniform_)
    model, noisy = noisy_copy(net)
    for name, p in model.named_parameters():
        p.requires_grad_("neuron_" in name)  # the weights get no step in their code either (no optimiser holds them)
    masks = [m.neuron_mask for _, m in noisy]
    noises = [t for _, m in noisy for t in (m.neuron_noise, m.neuron_noise_bias)]
    mask_opt = torch.optim.SGD(masks, lr=s["lr"], momentum=0.9)
    noise_opt = torch.optim.SGD(noises, lr=s["eps"] / s["noise_steps"])
    every = min(AUTHORS["anp"]["print_every"], s["steps"])
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(range(len(x)), replacement=True, num_samples=every * s["batch_size"], generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=s["batch_size"], sampler=sampler)
    same_draws = bool(s.get("same_draws"))

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if same_draws:  # perturbd's draws: one generator, a batch then the noise starts, layer by layer
            for _ in range(s["steps"]):
                pick = torch.randint(len(x), (s["batch_size"],), generator=gen)
                yield x[pick], y[pick]
        else:
            for _ in range(math.ceil(s["steps"] / every)):  # their nb_repeat passes of print_every batches
                yield from loader

    model.train()
    for images, labels in batches():
        if s["eps"] > 0.0:  # step 1: the adversarial neuron perturbation
            for _, m in noisy:
                if same_draws:
                    with torch.no_grad():
                        for t in (m.neuron_noise, m.neuron_noise_bias):
                            t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * s["eps"])
                else:
                    m.reset(rand_init=True, eps=s["eps"])
            for _ in range(s["noise_steps"]):
                noise_opt.zero_grad()
                for _, m in noisy:
                    m.is_perturbed = True
                (-F.cross_entropy(model(images), labels)).backward()
                for t in noises:
                    assert t.grad is not None
                    t.grad.data = torch.sign(t.grad.data)
                noise_opt.step()
        mask_opt.zero_grad()  # step 2: the masks, on the natural and the perturbed loss
        loss_rob: torch.Tensor | float = 0.0
        if s["eps"] > 0.0:
            for _, m in noisy:
                m.is_perturbed = True
            loss_rob = F.cross_entropy(model(images), labels)
        for _, m in noisy:
            m.is_perturbed = False
        loss_nat = F.cross_entropy(model(images), labels)
        (s["alpha"] * loss_nat + (1 - s["alpha"]) * loss_rob).backward()
        mask_opt.step()
        with torch.no_grad():
            for mask in masks:
                mask.clamp_(0.0, 1.0)
    # save_mask_scores writes '{:.4f}'; prune_neuron_cifar reads those and prunes mask <= threshold
    decimals = AUTHORS["anp"]["mask_decimals"]
    values = {name: [round(float(v), decimals) for v in m.neuron_mask.detach()] for name, m in noisy}
    pruned = {name: [i for i, v in enumerate(vals) if v <= s["threshold"]] for name, vals in values.items()}
    out = copy.deepcopy(net)
    state = out.state_dict()
    for name, idx in pruned.items():
        state[f"{name}.weight"][idx] = 0.0
    out.load_state_dict(state)
    return out.eval(), {"masks": {n: m.neuron_mask.detach().clone() for n, m in noisy}, "pruned": pruned}


# --------------------------------------------------------------------------- I-BAU (plain)


def grad_unused_zero(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Their ``grad_unused_zero``: the gradient of ``output`` for each input, zeros where unused."""
    grads = torch.autograd.grad(output, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for g, v in zip(grads, inputs, strict=True)]


def fixed_point(
    params: list[torch.Tensor], hparams: list[torch.Tensor], k: int, inner_lr: float, inner: Callable, outer: Callable, tol: float
) -> None:
    """``hypergrad.fixed_point`` with their ``GradientDescent(loss_inner, inner_lr)`` as the
    fixed-point map: the hypergradient added to each ``hparams``' ``.grad``."""
    params = [w.detach().requires_grad_(True) for w in params]
    o_loss = outer(params)
    grad_outer_w = grad_unused_zero(o_loss, params)
    grad_outer_h = grad_unused_zero(o_loss, hparams)
    grads_inner = torch.autograd.grad(inner(params), params, create_graph=True)
    w_mapped = [w - inner_lr * g for w, g in zip(params, grads_inner, strict=True)]
    vs = [torch.zeros_like(w) for w in params]
    vs_vec = torch.cat([v.reshape(-1) for v in vs])
    for _ in range(k):
        prev = vs_vec
        vs = list(torch.autograd.grad(w_mapped, params, grad_outputs=vs, retain_graph=True))
        vs = [v + g for v, g in zip(vs, grad_outer_w, strict=True)]
        vs_vec = torch.cat([v.reshape(-1) for v in vs])
        if float(torch.norm(vs_vec - prev)) < tol:
            break
    implicit = torch.autograd.grad(w_mapped, hparams, grad_outputs=vs, allow_unused=True)
    for h, g, go in zip(hparams, implicit, grad_outer_h, strict=True):
        total = go if g is None else g + go
        h.grad = total if h.grad is None else h.grad + total


def plain_ibau(net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Their ``defense.py`` unlearning loop on a copy of ``net``; the copy and each round's δ norm.
    With ``s["perturbd_choices"]``, perturbd's three departures instead: the inner loss on the batch
    being unlearned, at least one image perturbed (drawn as perturbd draws them), all K
    fixed-point steps."""
    model = copy.deepcopy(net).eval()
    aligned = bool(s.get("perturbd_choices"))
    pick = random.Random(seed)  # their random.sample draws from Python's generator
    gen = torch.Generator().manual_seed(seed)  # perturbd's draws, with perturbd_choices
    outer_opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    images_list = list(x.split(s["batch_size"]))
    labels_list = list(y.split(s["batch_size"]))
    hparams = list(model.parameters())

    def loss_inner(perturb: list[torch.Tensor], b: int) -> torch.Tensor:
        b = b if aligned else 0  # their first batch, whichever batch is unlearned
        per_logits = model(images_list[b] + perturb[0])
        return torch.mean(-F.cross_entropy(per_logits, labels_list[b], reduction="none")) + s["reg"] * torch.norm(perturb[0]) ** 2

    def chosen(n: int) -> list[int]:
        if aligned:
            return torch.randperm(n, generator=gen)[: max(1, int(n * s["perturbed_share"]))].tolist()
        return pick.sample(list(range(n)), int(n * s["perturbed_share"]))

    norms = []
    for _ in range(s["rounds"]):
        batch_pert = torch.zeros(1, *x.shape[1:], requires_grad=True)
        batch_opt = torch.optim.SGD([batch_pert], lr=s["search_lr"])
        for images in images_list:
            ori_lab = torch.argmax(model(images), dim=1).long()
            loss = F.cross_entropy(model(images + batch_pert), ori_lab, reduction="mean")
            batch_opt.zero_grad()
            (torch.mean(-loss) + s["reg"] * torch.norm(batch_pert) ** 2).backward()
            batch_opt.step()
        norms.append(float(batch_pert.detach().norm()) * 255.0)
        for batchnum in range(len(images_list)):

            def loss_outer(perturb: list[torch.Tensor], b: int = batchnum) -> torch.Tensor:
                images, labels = images_list[b], labels_list[b]
                patching = torch.zeros_like(images)
                patching[chosen(len(images))] = perturb[0]
                return F.cross_entropy(model(images + patching), labels)

            outer_opt.zero_grad()
            inner = functools.partial(loss_inner, b=batchnum)
            tol = 0.0 if aligned else AUTHORS["ibau"]["tolerance"]  # a norm is never below 0: all K steps
            fixed_point([batch_pert], hparams, s["fixed_point_steps"], s["inner_lr"], inner, loss_outer, tol)
            outer_opt.step()
    return model.eval(), {"delta_l2": norms}


# --------------------------------------------------------------------------- NAD (plain)


def block_ends(net: nn.Module) -> list[int]:
    """Indices in ``net.body`` of the ReLU that ends each conv → (pool) → BatchNorm → ReLU block."""
    body = list(net.body)
    return [i for i in range(1, len(body)) if isinstance(body[i], nn.ReLU) and isinstance(body[i - 1], nn.BatchNorm2d)]


def with_activations(net: nn.Module, x: torch.Tensor, taps: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The outputs of the blocks ending at ``taps`` and the logits (their WRN's ``forward`` returns both)."""
    h = net.normalize(x)
    acts = []
    for i, layer in enumerate(net.body):
        h = layer(h)
        if i in taps:
            acts.append(h)
    return acts, net.fc(h)


def attention_map(fm: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Their ``at.py``: ``Σ_c |a|^p``, divided by its norm over (H, W) + eps."""
    am = torch.sum(torch.pow(torch.abs(fm), p), dim=1, keepdim=True)
    return am / (torch.norm(am, dim=(2, 3), keepdim=True) + eps)


def perturbd_steps(n: int, batch_size: int, epochs: int, lr: float, seed: int) -> Iterator[tuple[float, torch.Tensor]]:
    """Each step's learning rate and batch indices as ``perturbd.train.fit`` draws them, restated:
    one generator seeded with ``seed``, a permutation per epoch, drop-last batches of
    ``min(batch_size, n)``, the rate ``lr · ½(1 + cos(π t / T))`` over all T steps."""
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch_size, n)
    per_epoch = n // batch
    total = per_epoch * epochs
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            yield lr * 0.5 * (1 + math.cos(math.pi * (epoch * per_epoch + b) / total)), order[b * batch : (b + 1) * batch]


def perturbd_sgd(params: list[nn.Parameter], lr: float) -> torch.optim.SGD:
    """The optimiser of perturbd's mitigations (``fine_tuning.tune``): Nesterov, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def nad_batches(
    x, y, s: dict[str, Any], epochs: int, gen: torch.Generator, seed: int
) -> Iterator[tuple[float, torch.Tensor, torch.Tensor]]:
    """(lr, images, labels) per step: the authors' ``adjust_learning_rate`` and shuffled loader, or
    with ``s["perturbd_schedule"]`` perturbd's (:func:`perturbd_steps`)."""
    if s.get("perturbd_schedule"):
        for lr, idx in perturbd_steps(len(x), s["batch_size"], epochs, s["lr"], seed):
            yield lr, x[idx], y[idx]
        return
    a = AUTHORS["nad"]
    loader = DataLoader(TensorDataset(x, y), batch_size=s["batch_size"], shuffle=True, generator=gen)
    for epoch in range(epochs):
        for img, target in loader:
            yield (a["lr"] if epoch < 2 else a["lr_after_two_epochs"]), img, target


def nad_train(student: nn.Module, teacher: nn.Module | None, x, y, s: dict[str, Any], epochs: int, betas, taps, gen, seed: int) -> None:
    """Their ``train`` / ``train_step``: SGD with Nesterov momentum, ``adjust_learning_rate`` per
    epoch, every image of the shuffled set; with ``teacher`` None the β = 0 run (the teacher's).
    With ``s["perturbd_schedule"]``: perturbd's optimiser, schedule and batches instead."""
    a = AUTHORS["nad"]
    params = list(student.parameters())
    if s.get("perturbd_schedule"):
        opt = perturbd_sgd(params, s["lr"])
    else:
        opt = torch.optim.SGD(params, lr=a["lr"], momentum=0.9, weight_decay=a["weight_decay"], nesterov=a["nesterov"])
    student.train()
    for lr, img, target in nad_batches(x, y, s, epochs, gen, seed):
        for group in opt.param_groups:
            group["lr"] = lr
        acts_s, out = with_activations(student, img, taps)
        loss = F.cross_entropy(out, target)
        if teacher is not None:
            with torch.no_grad():
                acts_t, _ = with_activations(teacher, img, taps)
            for beta, fs, ft in zip(betas, acts_s, acts_t, strict=True):
                loss = loss + F.mse_loss(attention_map(fs, s["p"]), attention_map(ft.detach(), s["p"])) * beta
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()


def plain_nad(net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher (the backdoored model fine-tuned, β = 0), then the student distilled from it."""
    taps = block_ends(net)
    betas = list(s["betas"])[-len(taps) :]
    gen = torch.Generator().manual_seed(seed)
    teacher = copy.deepcopy(net)
    nad_train(teacher, None, x, y, s, s["teacher_epochs"], betas, taps, gen, seed)
    for q in teacher.parameters():
        q.requires_grad_(False)
    student = copy.deepcopy(net)
    nad_train(student, teacher.eval(), x, y, s, s["epochs"], betas, taps, gen, seed)
    return student, {"layers": [f"body.{i}" for i in taps], "betas": betas}


# --------------------------------------------------------------------------- FT-SAM (plain)


def smooth_crossentropy(pred: torch.Tensor, gold: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BackdoorBench's ``smooth_crossentropy``: the KL divergence to the smoothed one-hot, per image."""
    one_hot = torch.full_like(pred, smoothing / (pred.size(1) - 1)).scatter_(1, gold.unsqueeze(1), 1.0 - smoothing)
    return F.kl_div(F.log_softmax(pred, dim=1), one_hot, reduction="none").sum(-1)


def plain_ft_sam(net: nn.Module, x: torch.Tensor, y: torch.Tensor, s: dict[str, Any], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """BackdoorBench's ``_train_sam`` with its ``SAM.step`` (α = 0: no gradient decomposition)."""
    a = AUTHORS["ft_sam"]
    model = copy.deepcopy(net)
    params = list(model.parameters())
    aligned = bool(s.get("perturbd_schedule"))
    base = perturbd_sgd(params, s["lr"]) if aligned else torch.optim.SGD(params, lr=s["lr"], momentum=0.9, weight_decay=a["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=a["cosine_t_max_steps"])
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    loader = DataLoader(TensorDataset(x, y), batch_size=s["batch_size"], shuffle=True, generator=torch.Generator().manual_seed(seed))

    def batches() -> Iterator[tuple[float | None, torch.Tensor, torch.Tensor]]:
        """(lr or None: the scheduler's, images, labels) per step; perturbd's with ``perturbd_schedule``."""
        if aligned:
            for lr, idx in perturbd_steps(len(x), s["batch_size"], s["epochs"], s["lr"], seed):
                yield lr, x[idx], y[idx]
        else:
            for _ in range(s["epochs"]):
                for img, target in loader:
                    yield None, img, target

    def get_grad(img: torch.Tensor, target: torch.Tensor) -> None:
        base.zero_grad()
        smooth_crossentropy(model(img), target, s["label_smoothing"]).mean().backward()

    model.train()
    steps, last_lr = 0, s["lr"]
    for lr, img, target in batches():
        if lr is not None:
            for group in base.param_groups:
                group["lr"] = lr
        last_lr = base.param_groups[0]["lr"]
        get_grad(img, target)
        with torch.no_grad():  # perturb_weights
            scaled = [((p.abs() if s["adaptive"] else 1.0) * p.grad).norm(p=2) for p in params if p.grad is not None]
            scale = s["rho"] / (torch.norm(torch.stack(scaled), p=2) + a["perturb_eps"])
            e_ws = []
            for p in params:
                e_w = p.grad * scale if p.grad is not None else torch.zeros_like(p)
                if s["adaptive"]:
                    e_w = e_w * torch.pow(p, 2)
                p.add_(e_w)
                e_ws.append(e_w)
        momenta = [m.momentum for m in norms]  # disable_running_stats
        for m in norms:
            m.momentum = 0
        get_grad(img, target)
        with torch.no_grad():  # unperturb
            for p, e_w in zip(params, e_ws, strict=True):
                p.sub_(e_w)
        base.step()
        for m, momentum in zip(norms, momenta, strict=True):  # enable_running_stats
            m.momentum = momentum
        if lr is None:
            scheduler.step()
        steps += 1
    return model.eval(), {"last_lr": last_lr, "steps": steps}


# --------------------------------------------------------------------------- both, one method


def perturbd_params(method: str, s: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """``s`` as perturbd's defence takes it (``n_clean`` given, the plain side's options dropped,
    the seed set)."""
    out = {k: v for k, v in s.items() if k not in PLAIN_ONLY}
    if method == "clp":
        return out
    return out | {"n_clean": n, "seed": seed}


def run_method(case: Case, method: str, s: dict[str, Any], seed: int, done: dict[str, Any]) -> dict[str, Any]:
    """Both implementations of ``method`` from ``case.model`` on the same clean images; perturbd's
    side is fitted once per parameters (``done``: a row that changes only the plain side reuses it)."""
    n = clean_count(case, s) if method != "clp" else 0
    clean = case.first(n) if n else case.first(2)  # CLP reads the image shape only
    x, y = to_float01(clean.images), clean.labels
    params = perturbd_params(method, s, n, seed)
    key = f"{method} {sorted(params.items())}"
    if key not in done:
        start = time.perf_counter()
        done[key] = (build_defense(method, **params).fit(case.model, clean), time.perf_counter() - start)
    defence, ours_seconds = done[key]
    ours_model = defence.model_
    start = time.perf_counter()
    if method == "clp":
        plain_model = copy.deepcopy(case.model)
        detail: dict[str, Any] = {"pruned": plain_clp(plain_model, s["u"])}
        plain_model.eval()
    else:
        plain = {"anp": plain_anp, "nad": plain_nad, "ibau": plain_ibau, "ft_sam": plain_ft_sam}[method]
        plain_model, detail = plain(case.model, x, y, s, seed)
    plain_seconds = time.perf_counter() - start
    row: dict[str, Any] = {"params": s, "authors": AUTHORS.get(method, {}), "clean_used": n}
    for side, model, seconds in (("perturbd", ours_model, ours_seconds), ("plain", plain_model, plain_seconds)):
        after = case.score(model)
        b = case.before
        row[side] = after | {
            "der": defense_effectiveness_rating(b["asr"], after["asr"], b["accuracy"], after["accuracy"]),
            "seconds": round(seconds, 2),
        }
    row["compare"] = compare(method, defence, detail) | {"max_weight_difference": weight_gap(ours_model, plain_model)}
    if method == "ft_sam":  # perturbd.train.fit drops the last partial batch of each epoch
        row["compare"]["steps_perturbd"] = s["epochs"] * (n // min(s["batch_size"], n))
    return row


def weight_gap(a: nn.Module, b: nn.Module) -> float:
    """The largest absolute difference between the two models' floating-point weights and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point() and sa[k].numel())


def compare(method: str, defence: Any, detail: dict[str, Any]) -> dict[str, Any]:
    """What the two did, side by side: pruned channels, masks, layers, δ norms."""
    if method == "clp":
        ours = {k: v for k, v in defence.pruned_.items()}
        return {"pruned_perturbd": ours, "pruned_plain": detail["pruned"], "same_pruned": ours == detail["pruned"]}
    if method == "anp":
        ours_m = torch.cat([defence.masks_[k] for k in defence.layers_])
        theirs_m = torch.cat([detail["masks"][k] for k in defence.layers_])
        both = torch.stack([ours_m, theirs_m])
        corr = float(torch.corrcoef(both)[0, 1]) if float(both.std(1).min()) > 0 else None
        return {
            "pruned_perturbd": defence.pruned_, "pruned_plain": detail["pruned"], "neurons": len(ours_m),
            "mask_correlation": corr, "mask_max_difference": float((ours_m - theirs_m).abs().max()),
            "mask_mean_perturbd": float(ours_m.mean()), "mask_mean_plain": float(theirs_m.mean()),
            "mask_min_perturbd": float(ours_m.min()), "mask_min_plain": float(theirs_m.min()),
        }  # fmt: skip
    if method == "nad":
        return {
            "layers_perturbd": defence.layers_,
            "layers_plain": detail["layers"],
            "betas_perturbd": defence.betas_,
            "betas_plain": detail["betas"],
        }
    if method == "ibau":
        return {"delta_l2_perturbd": defence.delta_norms_, "delta_l2_plain": detail["delta_l2"]}
    return {"last_lr_plain": detail["last_lr"], "steps_plain": detail["steps"]}


# --------------------------------------------------------------------------- output

#: the differences by design between perturbd's implementation and the authors' code (the
#: defences' docstrings name them), one paragraph per method, for the markdown
DIFFERENCES: dict[str, str] = {
    "clp": (
        "Pairing, the scale and the arithmetic differ in form only here: perturbd pairs a conv with the BatchNorm its output "
        "reaches in a traced forward pass, the authors' code with the last conv registered before the BatchNorm, which in cnn28 "
        "(conv → max-pool → BatchNorm) is the same pair; perturbd divides by √(var + ε) and computes the spectral norms in "
        "float64 in one batched call, the authors by √var with one float32 SVD per channel. The pruned channels are compared "
        "exactly (column *same pruned*)."
    ),
    "anp": (
        "The same algorithm on the same images with different random draws: perturbd draws batches and noise starts from one "
        "seeded generator, the authors from a RandomSampler and the global generator, so masks near the threshold may fall on "
        "either side. perturbd applies masks and noise by forward hooks on the BatchNorms (`(out − β)(m + δ) + β(1 + ξ)`), the "
        "authors by replacing each BatchNorm with their NoisyBatchNorm2d (`γ(m + δ) x̂ + β(1 + ξ)`, the same function); the "
        "authors round the masks to 4 decimals before the threshold, perturbd does not. The row *anp, plain with perturbd's draws* "
        "runs the authors' loop on perturbd's batches and noise starts (perturbd's side is the *anp* row's, fitted once): "
        "what then remains between the masks is the arithmetic of hooks against NoisyBatchNorm2d."
    ),
    "nad": (
        "perturbd trains teacher and student with the project's one loop: lr 0.01 on a cosine schedule to 0, weight decay 5e-4, "
        "drop-last batches. The authors' code runs lr 0.1 for two epochs and 0.01 after, weight decay 1e-4, and keeps the last "
        "partial batch. Both distil the same two layers (the ends of cnn28's two conv blocks) with β = 1000, 1000. The row "
        "*nad, plain on perturbd's schedule* runs the authors' teacher and student losses with perturbd's optimiser, rate "
        "schedule and batches (perturbd's side is the *nad* row's)."
    ),
    "ibau": (
        "perturbd's fixed-point map reads the batch being unlearned and perturbs at least one image of every batch; the authors' "
        "reads the first batch always and perturbs int(n · 0.01) images (none in a batch under 100). perturbd always runs all K "
        "fixed-point steps (the authors stop at a 1e-10 change); the perturbed images are drawn by different generators. The "
        "row *ibau, plain with perturbd's choices* runs the authors' loop with these three choices made as perturbd makes them."
    ),
    "ft_sam": (
        "perturbd steps a cosine schedule from lr to 0 over the whole run, per step, with Nesterov SGD and drop-last batches; "
        "BackdoorBench steps `CosineAnnealingLR(T_max=100)` after every batch: the rate reaches 0 after 100 steps and "
        "rises again after them (a cosine period of 200 steps), so it matches perturbd's schedule only in a run of 100 steps "
        "(the detail column gives its steps and last rate). BackdoorBench's SGD has plain momentum, "
        "and keeps the last partial batch. Both restore the weights after the SAM step (perturbd by copy, BackdoorBench by "
        "subtracting e) and keep BatchNorm's running statistics from the first pass. The row *ft_sam, plain on perturbd's "
        "schedule* runs BackdoorBench's SAM step with perturbd's optimiser, rate schedule and batches."
    ),
}


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def markdown(result: dict[str, Any]) -> str:
    b = result["before"]
    lines = [
        "# Mitigations against their authors' code paths (issue 42)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Code: perturbd {result['code']['perturbd']}, commit {result['code']['git_commit']}, sources {result['code']['code_digest']}. "
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, torch {result['machine']['torch']}, "
        f"load {result['machine']['load_average_1_5_15']}, {result['machine']['date']}.",
        "",
        f"Case: {result['case']['trigger']} (amplitude {result['case']['amplitude']:g}) at rate {result['case']['rate']:g} to class "
        f"{result['case']['target']} in {result['case']['arch']} on {result['case']['data']} ({result['train_images']} training images, "
        f"{result['poisoned']} poisoned; {result['test_images']} test images), {result['case']['epochs']} epochs, seed {result['seed']}: "
        f"accuracy {pct(b['accuracy'])}, ASR {pct(b['asr'])}, R-Acc {pct(b['robust_accuracy'])} before any mitigation.",
        "",
        "| method | implementation | clean images | accuracy after | ASR after | R-Acc after | DER | seconds | detail |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, row in result["methods"].items():
        method, c = row["method"], row["compare"]
        detail = {
            "clp": lambda: (
                f"same pruned: {'yes' if c['same_pruned'] else 'NO'}",
                f"pruned {c['pruned_perturbd']}",
                f"pruned {c['pruned_plain']}",
            ),
            "anp": lambda: (
                (f"mask correlation {c['mask_correlation']:.3f}" if c["mask_correlation"] is not None else "masks constant")
                + f", largest mask difference {c['mask_max_difference']:.2g}",
                f"pruned {sum(map(len, c['pruned_perturbd'].values()))}/{c['neurons']}, min mask {c['mask_min_perturbd']:.3f}",
                f"pruned {sum(map(len, c['pruned_plain'].values()))}/{c['neurons']}, min mask {c['mask_min_plain']:.3f}",
            ),
            "nad": lambda: ("", f"{c['layers_perturbd']} β {c['betas_perturbd']}", f"{c['layers_plain']} β {c['betas_plain']}"),
            "ibau": lambda: (
                "",
                "δ L2 " + ", ".join(f"{v:.0f}" for v in c["delta_l2_perturbd"]),
                "δ L2 " + ", ".join(f"{v:.0f}" for v in c["delta_l2_plain"]),
            ),
            "ft_sam": lambda: ("", f"{c['steps_perturbd']} steps", f"{c['steps_plain']} steps, lr of the last {c['last_lr_plain']:.2g}"),
        }[method]()
        for side, side_name, extra in (("perturbd", "perturbd", detail[1]), ("plain", "authors' path, plain", detail[2])):
            r = row[side]
            gap = f"largest weight difference {c['max_weight_difference']:.2g}"
            note = "; ".join(t for t in (extra, *((detail[0], gap) if side == "plain" else ())) if t)
            lines.append(
                f"| {label} | {side_name} | {row['clean_used']} | {pct(r['accuracy'])} | {pct(r['asr'])} | {pct(r['robust_accuracy'])} | "
                f"{r['der']:.3f} | {r['seconds']:.1f} | {note} |"
            )
    lines += ["", "## Differences by design", ""]
    lines += [f"- **{m}.** {DIFFERENCES[m]}" for m in dict.fromkeys(row["method"] for row in result["methods"].values())]
    lines += ["", "Settings (both sides; `authors` is what the plain side adds): see the JSON beside this file.", ""]
    return "\n".join(lines)


def rows(chosen: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The rows of the methods ``chosen``: each method at its defaults, then its :data:`VARIANTS`."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for method in chosen:
        out[method] = (method, {})
        out |= {label: v for label, v in VARIANTS.items() if v[0] == method}
    return out


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="which mitigations, each at its defaults and its variants (default: all five)",
    )
    p.add_argument("--seed", type=int, default=0, help="the case's and both implementations' seed")
    p.add_argument("--tiny", action="store_true", help="the test's case: 1,000 training images, 4 epochs, short defences")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--anp-drift", type=int, nargs="+", default=None, metavar="STEPS",
        help="only ANP: perturbd's masks against the authors' loop on perturbd's draws after each number of steps (anp_drift.json)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT, help=f"folder of {NAME}.json and .md (default: {OUT})")
    args = p.parse_args(argv)
    if args.seed < 0 or (args.threads is not None and args.threads < 1) or min(args.anp_drift or [1]) < 1:
        p.error("--seed must be at least 0, --threads and --anp-drift steps at least 1")
    return args


def header(argv: list[str] | None) -> dict[str, Any]:
    """The command, the code and the machine that made a result."""
    env = environment("cpu")
    machine = {k: env.get(k) for k in ("cpu", "torch", "python", "platform")} | {
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    return {
        "command": shlex.join(["python", "experiments/mitigation_authors_plain.py", *(sys.argv[1:] if argv is None else argv)]),
        "code": {k: env.get(k) for k in ("perturbd", "git_commit", "code_digest")},
        "machine": machine,
    }


def anp_drift(case: Case, steps: list[int], seed: int) -> list[dict[str, Any]]:
    """perturbd's ANP masks against the authors' loop on perturbd's draws, after each number of
    ``steps``: how far apart the two drift as the mask optimisation runs longer."""
    out = []
    for n in steps:
        s = SETTINGS["anp"] | {"steps": n, "same_draws": True}
        clean = case.first(s["n_clean"])
        defence = build_defense("anp", **perturbd_params("anp", s, len(clean), seed)).fit(case.model, clean)
        _, detail = plain_anp(case.model, to_float01(clean.images), clean.labels, s, seed)
        gap = (torch.cat([defence.masks_[k] - detail["masks"][k] for k in defence.layers_])).abs()
        out.append({"steps": n, "max_mask_difference": float(gap.max()), "masks_apart_1e-4": int((gap > 1e-4).sum()), "neurons": len(gap)})
        print(
            f"anp after {n} steps: largest mask difference {float(gap.max()):.2g}, {int((gap > 1e-4).sum())} masks apart by > 1e-4",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = options(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    spec = TINY_CASE if args.tiny else CASE
    case = Case(spec, args.seed)
    b = case.before
    print(
        f"backdoored: accuracy {pct(b['accuracy'])}, ASR {pct(b['asr'])}, R-Acc {pct(b['robust_accuracy'])} ({case.train_seconds:.0f} s)",
        flush=True,
    )
    if args.anp_drift:
        drift = header(argv) | {"case": spec, "seed": args.seed, "drift": anp_drift(case, args.anp_drift, args.seed)}
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "anp_drift.json", drift)
        print(f"wrote {args.out / 'anp_drift.json'}")
        return drift
    methods: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for label, (method, changes) in rows(args.method).items():
        settings = SETTINGS[method] | changes | (TINY_SETTINGS[method] if args.tiny else {})
        row = {"method": method} | run_method(case, method, settings, args.seed, fitted)
        methods[label] = row
        print(
            f"{label}: perturbd ASR {pct(row['perturbd']['asr'])} acc. {pct(row['perturbd']['accuracy'])} "
            f"({row['perturbd']['seconds']:.0f} s); plain ASR {pct(row['plain']['asr'])} acc. {pct(row['plain']['accuracy'])} "
            f"({row['plain']['seconds']:.0f} s)",
            flush=True,
        )
    result = header(argv) | {
        "case": spec, "seed": args.seed, "tiny": args.tiny, "train_images": case.train_images, "poisoned": case.poisoned,
        "test_images": len(case.test), "defender_clean_images": len(case.clean), "victim_seconds": round(case.train_seconds, 2),
        "before": b, "methods": methods,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{NAME}.json", result)
    (args.out / f"{NAME}.md").write_text(markdown(result))
    print(f"wrote {args.out / NAME}.json and .md")
    return result


def cli(argv: list[str] | None = None) -> int:
    """:func:`main`, with a user's mistake as one line and exit code 2."""
    return exit_code(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
