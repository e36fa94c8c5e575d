"""MM-BD (Wang, Xiang, Miller and Kesidis, IEEE S&P 2024): data-free model inspection by the
maximum margin statistic, run as the authors' code runs it.

A backdoor planted toward label t makes t's logit reachable with an unusually large margin over
every other logit (the trigger's features push it far), whatever the trigger's pattern type. Per
label k, MM-BD maximises ``margin_k(x) = f_k(x) − max_{j≠k} f_j(x)`` over inputs ``x`` from random
starts, needing no clean image; the label with the largest maximum margin is then tested against
a null distribution fitted to the other labels' maxima.

What the reference does (wanghangpsu/MM-BD @ 903338d, ``univ_bd.py``), and so what this does by
default:

- per label, ``starts`` (30) inputs drawn uniformly from [0, 1)^{C×H×W}, fed to the model clamped
  to [0, 1]; the loss is the margin summed over the starts, negated;
- ``steps`` (its ``NSTEP``, 300) steps of plain gradient descent, learning rate ``lr`` (1e-2) on
  the unclamped inputs: the reference builds a new ``SGD(lr=1e-2, momentum=0.2)`` every step, so
  its momentum buffer never carries over and each step is ``x −= lr ∇``; a label stops after the
  step at which its loss changed by less than ``tol`` (1e-5) relative to the previous step's
  (the first step compares with 1000, as the reference);
- the statistic of a label is the largest margin over its starts, in the last forward pass run
  (the one before the final step, as there);
- detection: a gamma distribution (shape, location and scale by maximum likelihood, scipy's
  ``gamma.fit``) is fitted to the statistics of every label but the largest, and the largest's
  p-value is ``1 − F(r_max)^K`` (K labels: the chance that the largest of K draws of the null is
  at least r_max); below ``alpha`` (0.05) the model is declared attacked, with that label as its
  target.

Where perturbd departs from it:

- **all labels in one batch**: the ``K × starts`` inputs go through the model in one forward pass
  per step (``labels_per_pass`` caps the labels in one pass); each label keeps its own loss and
  stopping rule. The model is in eval mode, so an input's gradient does not depend on the others:
  the result is the reference's label-by-label loop, in one pass (the tests check it);
- **seeded starts**: the reference draws its starts from torch's unseeded global generator; here
  each label's starts come from ``seed`` and the label alone (:func:`initial_inputs`), so any
  grouping of labels gives the same result and the same seed the same numbers;
- **a p-value per label**: the reference computes only the largest statistic's; the same test is
  run for every label k (a gamma fitted to the other labels' statistics, ``1 − F(r_k)^K``) and
  reported as evidence, but, as the reference, only the largest statistic's label can be flagged;
- **the score**: ``scores_`` is ``−log10`` of that p-value, so that a higher score is more
  suspicious, as every model inspector's anomaly index, and ``anomaly_threshold`` is
  ``−log10(alpha)`` (1.30 for 0.05);
- **a failed fit**: where scipy cannot fit the null (every other statistic equal), the p-value is
  1 (no evidence) and ``facts_["null_fit_failed"]`` names the labels.

After ``fit``: ``margins_`` ``(K,)`` (the statistic per label), ``p_values_`` ``(K,)``,
``inputs_`` ``(K, C, H, W)`` (the clamped input of each label's largest margin), ``steps_``
``(K,)`` (steps run), ``scores_``, ``flagged_``, ``flagged_labels_``, ``evidence_``
(``max_margin``, ``p_value``, ``steps`` per label), ``facts_``, ``seconds_`` and ``clean_used_ = 0``;
:meth:`figures` draws the maximising input of every label and the statistics.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset
from perturbd.defenses.base import Defense, DefenseParams, Figures, register_defense
from perturbd.errors import ConfigError
from perturbd.models import frozen, model_device
from perturbd.progress import stage
from perturbd.seeding import derived_seed

FIRST_LOSS = 1000.0  # the reference's ``last_loss`` before the first step


def initial_inputs(shape: Sequence[int], label: int, starts: int, seed: int) -> torch.Tensor:
    """The ``starts`` random inputs ``(starts, C, H, W)`` of ``label``, uniform in [0, 1) (the
    reference's ``torch.rand``), from ``seed`` and the label alone."""
    gen = torch.Generator().manual_seed(derived_seed(seed, f"label {label}", "mm_bd"))
    return torch.rand(starts, *shape, generator=gen)


def margins_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``f_k(x) − max_{j≠k} f_j(x)`` of each row of ``logits`` ``(N, K)`` for its ``labels[n]``."""
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return own - others.amax(1)


def max_margins(
    model: nn.Module,
    shape: Sequence[int],
    labels: list[int],
    *,
    starts: int,
    steps: int,
    lr: float,
    tol: float,
    seed: int,
    description: str = "mm_bd",
) -> dict[str, torch.Tensor]:
    """Maximise each label's margin from its random starts, all labels in one batch (module docstring).

    Returns: ``margins`` ``(L,)`` (the largest margin of each label's starts in its last forward
    pass), ``inputs`` ``(L, C, H, W)`` (that start's input, clamped to [0, 1]) and ``steps``
    ``(L,)`` (steps run), on the CPU, in the order of ``labels``.
    """
    device = model_device(model)
    n = len(labels)
    x = torch.stack([initial_inputs(shape, lab, starts, seed) for lab in labels]).to(device)  # (L, S, C, H, W)
    target = torch.tensor(labels, device=device)
    last = torch.full((n,), FIRST_LOSS, dtype=torch.float64)
    margins, steps_run = torch.zeros(n), torch.zeros(n, dtype=torch.long)
    inputs = torch.zeros(n, *shape)
    alive = torch.arange(n)
    with frozen(model), stage(description, n * steps) as progress:  # one step per label and step
        for step in range(steps):
            xa = x[alive.to(device)].detach().requires_grad_(True)
            clamped = xa.clamp(0, 1)
            out = model(clamped.flatten(0, 1)).float()
            margin = margins_of(out, target[alive.to(device)].repeat_interleave(starts)).view(len(alive), starts)
            loss = -margin.sum(1)  # per label: −Σ own + Σ largest other, the reference's loss
            (grad,) = torch.autograd.grad(loss.sum(), [xa])
            with torch.no_grad():
                x[alive.to(device)] = xa - lr * grad
            now = loss.detach().double().cpu()
            best = margin.detach().argmax(1)
            margins[alive] = margin.detach().amax(1).cpu()
            inputs[alive] = clamped.detach()[torch.arange(len(alive), device=device), best].cpu()
            steps_run[alive] = step + 1
            progress.advance(len(alive), images=len(alive) * starts)
            stop = ((last[alive] - now).abs() / last[alive].abs()) < tol
            last[alive] = now
            if bool(stop.any()):
                progress.advance(int(stop.sum()) * (steps - step - 1))  # the steps a label that stops skips
                alive = alive[~stop]
            if not len(alive):
                break
    return {"margins": margins, "inputs": inputs, "steps": steps_run}


def order_p_value(stat: float, null: np.ndarray, k: int) -> float | None:
    """``1 − F(stat)^k`` for F a gamma fitted (shape, location, scale; scipy's maximum
    likelihood) to ``null``: the reference's p-value of the largest of ``k`` statistics. None
    where scipy cannot fit ``null``."""
    import scipy.stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's fit warns of its own intermediate steps (overflow, divide)
        try:
            a, loc, scale = scipy.stats.gamma.fit(null)
        except (scipy.stats.FitError, ValueError, RuntimeError):
            return None
        cdf = float(scipy.stats.gamma.cdf(stat, a=a, loc=loc, scale=scale))
    if not math.isfinite(cdf):
        return None
    return float(min(1.0, max(0.0, 1.0 - cdf**k)))


@register_defense
class MMBD(Defense):
    name = "mm_bd"
    kind = "model"

    class Params(DefenseParams):
        starts: int = Field(30, ge=1, le=10_000, description="random inputs per label whose margins are maximised (the reference: 30)")
        steps: int = Field(300, ge=1, le=100_000, description="gradient steps per label at most (the reference's NSTEP: 300)")
        lr: float = Field(1e-2, gt=0, le=100, description="gradient-descent step size on inputs in [0, 1] (the reference: 1e-2)")
        tol: float = Field(
            1e-5, ge=0, le=1, description="a label stops once its loss changes by less than this, relative (the reference: 1e-5)"
        )
        alpha: float = Field(0.05, gt=0, lt=1, description="p-value below which the largest statistic's label is flagged (0.05)")
        labels_per_pass: int | None = Field(
            None, ge=1, le=100_000, description="labels whose inputs share one forward pass (None: all labels in one)"
        )
        seed: int | None = Field(None, ge=0, description="seeds the random starts (None: derived from the run seed)")

    @property
    def anomaly_threshold(self) -> float:
        """``−log10(alpha)``: the score above which a label is flagged."""
        return -math.log10(self.alpha)

    def fit(self, model: nn.Module, data: ImageDataset | None = None) -> MMBD:
        """Compute every label's maximum margin and test the largest; ``data`` is read only for
        the image shape and number of classes where the model does not state them (no image of it
        is used: ``clean_used_`` is 0)."""
        shape = getattr(model, "image_shape", None) or (data.image_shape if data is not None else None)
        k = getattr(model, "num_classes", None) or (data.num_classes if data is not None else None)
        if shape is None or k is None:
            raise ConfigError("mm_bd needs the model's image shape and number of classes: give a perturbd model (perturbd.wrap) or data")
        if int(k) < 3:
            raise ConfigError(f"mm_bd fits a null distribution to the other labels' statistics and needs at least 3 classes, got {k}")
        self.clean_used_ = 0
        labels = list(range(int(k)))
        per = self.labels_per_pass or len(labels)
        kw = dict(starts=self.starts, steps=self.steps, lr=self.lr, tol=self.tol, seed=self.rng_seed())
        started = time.perf_counter()
        parts = [max_margins(model, tuple(shape), labels[i : i + per], **kw) for i in range(0, len(labels), per)]
        res = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        self.margins_, self.inputs_, self.steps_ = res["margins"], res["inputs"], res["steps"]
        stats = self.margins_.double().numpy()
        p_values, failed = [], []
        for lab in labels:
            p = order_p_value(float(stats[lab]), np.delete(stats, lab), len(labels))
            p_values.append(1.0 if p is None else p)
            if p is None:
                failed.append(lab)
        self.seconds_ = time.perf_counter() - started
        self.p_values_ = torch.tensor(p_values, dtype=torch.float64)
        self.scores_ = (-torch.log10(self.p_values_.clamp_min(1e-300))).float()
        top = int(torch.argmax(self.margins_))
        self.flagged_ = torch.zeros(len(labels), dtype=torch.bool)
        self.flagged_[top] = bool(self.p_values_[top] < self.alpha)
        self.flagged_labels_ = torch.nonzero(self.flagged_).flatten().tolist()
        self.evidence_ = {
            "max_margin": [round(float(v), 4) for v in self.margins_],
            "p_value": [float(f"{float(v):.4g}") for v in self.p_values_],
            "steps": [int(v) for v in self.steps_],
        }
        self.facts_ = {"starts_per_label": self.starts, "largest_margin_label": top, "null_fit_failed": failed}
        return self

    def figures(self) -> Figures:
        """``<name>_inputs.png``: each label's margin-maximising input (the flagged one titled in
        red); ``<name>_margins.png``: the statistic per label, the flagged one in red."""
        inputs, margins, p_values, flagged = self.inputs_.clone(), self.margins_.clone(), self.p_values_.clone(), self.flagged_.clone()
        return {
            f"{self.name}_inputs.png": lambda path: _inputs_png(inputs, margins, p_values, flagged, path),
            f"{self.name}_margins.png": lambda path: _margins_png(margins, flagged, path),
        }


def _inputs_png(inputs: torch.Tensor, margins: torch.Tensor, p_values: torch.Tensor, flagged: torch.Tensor, path: Path) -> None:
    k = len(inputs)
    cols = min(k, 10)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.6 * rows + 0.4), dpi=120, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        arr = inputs[i].float().clamp(0, 1).numpy()
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        colour = "tab:red" if bool(flagged[i]) else "black"
        ax.set_title(f"{i}: {float(margins[i]):.1f}\np {float(p_values[i]):.2g}", fontsize=7, color=colour)
    fig.suptitle("MM-BD: the input of each label's largest margin (label: margin, p-value)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _margins_png(margins: torch.Tensor, flagged: torch.Tensor, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 2.8), dpi=120)
    ax.bar(range(len(margins)), margins.numpy(), color=["tab:red" if bool(f) else "tab:blue" for f in flagged])
    ax.set_xticks(range(len(margins)))
    ax.set_xlabel("label")
    ax.set_ylabel("maximum margin (logits)")
    ax.set_title("MM-BD: red = flagged (p-value below alpha)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
