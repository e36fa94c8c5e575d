"""Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li and Ma, "Neural Attention Distillation:
Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021; authors' code ``bboylyg/NAD``).

The method, as here: a *teacher* is the backdoored model fine-tuned on a small clean set
(``teacher_epochs``); the backdoored model itself is then the *student*, trained on the same
clean images to minimise cross-entropy plus, at each chosen layer ``i``, ``β_i`` times the mean
squared difference between the student's and the teacher's *attention maps*. An attention map
(Zagoruyko and Komodakis's attention transfer, as in the authors' ``at.py``) is the sum over
channels of ``|activation|^p`` (``p = 2``), flattened and divided by its L2 norm (+ 1e-6) per
image. ``model_`` is the student; the input model is untouched.

Clean-data budget: ``clean_share`` = 5 % of the defender's clean images (the training split less
what the attacker touched; the paper and the code take 5 % of the training data), or ``n_clean``
images when given.

Defaults, and whose they are:

- ``betas = [500, 1000, 1000]`` at the last three stages, ``p = 2``: the authors' code at its
  last commit (``config.py``: ``beta1/2/3``; an earlier commit had ``0, 0, 5000``, the last group
  only) and BackdoorBench's ``config/defense/nad``, which agree.
- ``epochs = 20`` (the authors' NAD training), ``teacher_epochs = 10`` (the authors' README: the
  teacher is fine-tuned "for 5~10 epochs"; BackdoorBench: 10), batch 64 (the authors').
- ``lr = 0.01`` with a cosine schedule to 0, SGD with Nesterov momentum 0.9 and weight decay 5e-4
  (the project's one loop, :func:`~perturbd.defenses.fine_tuning.tune`), for teacher and student.
  Departure: the authors run 0.1 for two epochs, then 0.01 (``adjust_learning_rate``), with weight
  decay 1e-4; 0.1 on a tiny clean set is what BackdoorBench also avoids (0.01, cosine). No data
  augmentation (the authors crop and flip): no mitigation here augments, so that they compare.

Which layers (``layers``): the authors' WRN-16-1 returns the outputs of its three residual groups.
Any architecture here (:func:`stages`): the modules of one forward pass that return a 4-D
activation are split into *stages*, runs of equal channel count (a new stage starts where the
width changes: a resolution change alone does not start one, since a pooling layer may sit inside
a conv–pool–BN–ReLU block); each stage is read at its outermost module (fewest dots in its name),
the last one of those: a residual group's ``Sequential`` (``body.layer1`` … of
``preact_resnet18`` and ``tv:resnet18``), the ReLU that ends a conv–pool–BN–ReLU block of
``cnn28``. On the authors' WRN-16-1 this rule reads the last group after the network's final
BN–ReLU (same width), where the authors read it before. Pooling, flattening, dropout and identity layers and modules called more than
once are never read (as in fine-pruning). The last ``len(betas)`` stages are distilled; a model
with fewer stages uses its stages with the last betas. ``layers`` names modules instead (as
``model.named_modules()`` names them), one per beta. A TorchScript model takes no forward hooks:
one line says to give its state dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import fresh_copy, register_defense, trace_modules
from perturbd.defenses.fine_pruning import PASS_THROUGH
from perturbd.defenses.fine_tuning import ShareParams, Tuned, budget, tune
from perturbd.errors import ConfigError
from perturbd.models.layers import check_layer, submodule

Beta = Annotated[float, Field(ge=0, le=1e7)]


def _no_script(model: nn.Module) -> None:
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ConfigError(
            "nad reads attention maps through forward hooks, which a TorchScript model does not take; give its state dict (--arch)"
        )


@torch.no_grad()
def stages(model: nn.Module, images: torch.Tensor) -> list[str]:
    """The names of the modules that end each stage of ``model`` (see the module docstring), in
    forward order, from one eval-mode pass of ``images`` (a few clean images)."""
    _no_script(model)
    done: list[tuple[str, int]] = []
    calls: Counter[str] = Counter()

    def note(name: str, module: nn.Module, out: object) -> None:
        calls[name] += 1
        if not isinstance(module, PASS_THROUGH) and isinstance(out, torch.Tensor) and out.ndim == 4:
            done.append((name, int(out.shape[1])))

    trace_modules(model, images, note)
    found = [(n, width) for n, width in done if calls[n] == 1]
    groups: list[list[str]] = []
    for i, (name, width) in enumerate(found):
        if i == 0 or width != found[i - 1][1]:
            groups.append([])
        groups[-1].append(name)
    picked = []
    for names in groups:
        top = min(n.count(".") for n in names)
        picked.append([n for n in names if n.count(".") == top][-1])
    if not picked:
        raise ConfigError(f"nad needs a model with spatial (4-D) activations to read attention from; {type(model).__name__} has none")
    return picked


def attention(activation: torch.Tensor, p: float) -> torch.Tensor:
    """The attention map of a ``(N, C, H, W)`` activation: ``Σ_c |a|^p`` per position, flattened to
    ``(N, H·W)`` and divided by its L2 norm (+ 1e-6) per image (the authors' ``AT.attention_map``)."""
    a = activation.float().abs().pow(p).sum(1).flatten(1)
    out: torch.Tensor = a / (a.norm(dim=1, keepdim=True) + 1e-6)
    return out


class _Taps:
    """Forward hooks that keep the outputs of named modules of one model, in ``names`` order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.names = list(names)
        self.handles = [
            submodule(model, n).register_forward_hook(lambda _m, _i, out, n=n: self.outputs.__setitem__(n, out)) for n in self.names
        ]

    def take(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise ConfigError(f"nad.layers: layer '{missing[0]}' is not used when the model classifies an image; name another")
        out = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register_defense
class NeuralAttentionDistillation(Tuned):
    name = "nad"
    kind = "mitigation"

    class Params(ShareParams):
        epochs: int = Field(20, ge=1, le=1000, description="passes of the attention distillation (Li et al.: 20)")
        teacher_epochs: int = Field(10, ge=1, le=1000, description="passes fine-tuning the teacher (Li et al.: 5 to 10)")
        lr: float = Field(0.01, gt=0, le=10, description="initial SGD learning rate of teacher and student (cosine to 0)")
        betas: list[Beta] = Field(
            [500.0, 1000.0, 1000.0], min_length=1, max_length=16, description="attention-loss weights, shallow to deep (Li et al.)"
        )
        layers: list[str] | None = Field(
            None, min_length=1, max_length=16, description="modules distilled, one per beta (None: the last stages)"
        )
        p: float = Field(2.0, gt=0, le=8, description="power of the attention map")

    def fit(self, model: nn.Module, data: ImageDataset) -> NeuralAttentionDistillation:
        clean = budget(data, self.n_clean, self.clean_share)
        self.clean_used_ = len(clean)
        _no_script(model)
        betas: list[float] = list(self.betas)
        if self.layers is not None:
            if len(self.layers) != len(betas):
                raise ConfigError(
                    f"nad.layers names {len(self.layers)} layers but nad.betas has {len(betas)} weights; give one beta per layer"
                )
            arch = getattr(model, "arch", "") or type(model).__name__
            self.layers_ = [check_layer(model, n, arch) for n in self.layers]
        else:
            self.layers_ = stages(model, clean.images[:2])[-len(betas) :]
            betas = betas[-len(self.layers_) :]
        self.betas_ = betas
        seed = self.rng_seed()
        teacher = fresh_copy(model)
        self.teacher_losses_ = tune(
            teacher, clean, epochs=self.teacher_epochs, lr=self.lr, batch_size=self.batch_size, seed=seed, description="nad teacher"
        )
        teacher.eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        self.model_ = fresh_copy(model)
        p: float = self.p
        mine, theirs = _Taps(self.model_, self.layers_), _Taps(teacher, self.layers_)

        def loss_fn(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher(x)
            target = theirs.take()
            loss = F.cross_entropy(student(x).float(), y)
            for beta, s, t in zip(betas, mine.take(), target, strict=True):
                loss = loss + beta * F.mse_loss(attention(s, p), attention(t, p))
            return loss

        try:
            self.tune_model(clean, seed, loss_fn)
        finally:
            mine.remove()
            theirs.remove()
        self.facts_ = {"layers": self.layers_, "betas": betas, "summary": f"attention at {', '.join(self.layers_)}"}
        return self
