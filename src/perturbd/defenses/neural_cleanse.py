"""Neural Cleanse (Wang et al., IEEE S&P 2019): model inspection, run as the authors' code runs it.

For every label k, reverse-engineer the smallest trigger that sends clean images to k: a mask
``m_k ∈ [0, 1]^{H×W}`` (one channel) and a pattern ``p_k ∈ [0, 1]^{C×H×W}`` applied as
``x' = (1 − m_k) x + m_k p_k``, minimising ``CE(f(x'), k) + λ_k ‖m_k‖₁``. A backdoored label needs
a much smaller mask than the others: the MAD anomaly index flags it.

What the reference does (bolunwang/backdoor @ e8577747: ``visualizer.py``,
``gtsrb_visualize_example.py``, ``mad_outlier_detection.py``), and so what this does by default:

- mask and pattern tanh-parametrised, ``tanh(w) / (2 − ε) + 0.5`` (ε = 1e-7), from a random
  initial mask and pattern; Adam, learning rate 0.1, betas (0.5, 0.9), in Keras 2's form
  (``lr_t = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ)``, ``w −= lr_t m / (√v + 1e-7)``);
- ``epochs`` (its ``STEPS``, 1000) epochs of ``epoch_images // batch_size`` mini-batches (its
  ``NB_SAMPLE / BATCH_SIZE``, 1000 // 32 = 31), drawn from all the clean images it is given (the
  reference flows over its whole test set, not a fixed sample of 1,000), so about 31,000
  mini-batches a label unless it stops early;
- the cost λ starts at 0 and follows the epoch-level schedule of
  :mod:`perturbd.defenses.nc_schedule` (patience 5, ×2 up, ÷2^1.5 down, attack threshold 0.99);
  the result is the mask and pattern after the last epoch whose mean attack accuracy reached the
  threshold with the smallest mean mask L1 so far (the last state if none did); early stop as
  there (threshold 1.0, patience 25);
- anomaly index ``|l1 − median| / (1.4826 · median(|l1 − median|))``; only labels whose norm is
  below the median are flagged, when their index exceeds ``anomaly_threshold`` (2).

Where perturbd departs from it:

- **true cross-entropy**: the reference calls Keras' ``categorical_crossentropy(output, y_true)``
  with its arguments swapped (bolunwang/backdoor issue #11), which optimises about
  ``16.1 · (1 − p_target)`` rather than ``−log p_target``; this minimises the cross-entropy the paper states;
- **float masks**: the reference reads the masks back from 8-bit PNG files to compute the norms;
  the float masks are used here;
- **pixels in [0, 1]**: the reference blends in [0, 255]; the blend is linear, so the same;
- **batches**: the mini-batches come from seeded passes over the clean images (:func:`flow`),
  as Keras' generator flows over the whole set epoch after epoch, except that each pass skips its
  last ``N mod batch_size`` images rather than yielding a short batch; an epoch of a pool smaller
  than ``epoch_images`` is one pass (``N // batch_size`` mini-batches), not several;
- **all labels in one batch** (``mode="batched"``): the K masks and patterns are one ``(K, …)``
  tensor; each step blends the same clean batch with every running label's trigger in one
  forward pass over ``K × batch_size`` images. Each label keeps its own cost, counters, flags,
  best and early stop, and its own Adam moments (Adam is element-wise, so the losses share no
  state); a label that stops early leaves the batch. ``mode="loop"`` runs label by label with the
  same batches: the same result (the reference's loop), in K passes.

After ``fit``: ``facts_`` (``clean_pool``: the clean images drawn from, ``batches_per_epoch``),
``norms_`` (mask L1, pixels), ``scores_`` (anomaly index per label, positive =
smaller than the median), ``flagged_``, ``flagged_labels_``, ``masks_`` ``(K, H, W)``, ``patterns_``
``(K, C, H, W)``, ``reached_`` (a result reached the threshold), ``success_``, ``epochs_`` (epochs
run), ``stopped_`` (stopped early), ``seconds_`` and ``evidence_`` (``mask_l1``, ``reached``,
``epochs``, ``stopped_early`` per label, for reports); :meth:`figures` draws the recovered trigger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, Figures, register_defense, take
from perturbd.defenses.nc_figures import mask_norms_png, recovered_trigger_png
from perturbd.defenses.nc_schedule import CostSchedule
from perturbd.models import frozen, model_device
from perturbd.progress import stage
from perturbd.seeding import derived_seed

EPS = 1e-7  # Keras' K.epsilon(): the tanh squashing and Adam's denominator in the reference
BETAS = (0.5, 0.9)


def squash(w: torch.Tensor) -> torch.Tensor:
    """The reference's ``tanh(w) / (2 − ε) + 0.5``: a parameter to [0, 1]."""
    return torch.tanh(w) / (2 - EPS) + 0.5


def unsquash(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squash` (computed in float64, as the reference's numpy)."""
    return torch.atanh((x.double() - 0.5) * (2 - EPS)).float()


def initial_trigger(shape: tuple[int, int, int], label: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random initial mask ``(1, H, W)`` and pattern ``(C, H, W)`` in [0, 1) of ``label`` (uniform,
    as the reference's ``np.random.random``), from ``seed`` and the label alone."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(derived_seed(seed, f"label {label}", "neural_cleanse"))
    return torch.rand(1, h, w, generator=gen), torch.rand(c, h, w, generator=gen)


class _Adam:
    """Keras 2's Adam over row-stacked parameters (one row per label); rows can be dropped."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        (b1, b2), t = BETAS, self.t
        lr_t = self.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(lr_t * m / (v.sqrt() + EPS))

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (labels still running) of every parameter and moment."""
        self.params = [p[rows] for p in self.params]
        self.m = [m[rows] for m in self.m]
        self.v = [v[rows] for v in self.v]


def flow(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless mini-batches of ``batch`` positions in ``range(n)``, as Keras' ``flow`` over a data
    set: a fresh permutation from ``gen`` per pass, taken in order; the last ``n mod batch``
    positions of a pass are skipped (Keras yields them as a short batch)."""
    while True:
        order = torch.randperm(n, generator=gen)
        for s in range(n // batch):
            yield order[s * batch : (s + 1) * batch]


def reverse_triggers(
    model: nn.Module,
    images: torch.Tensor,
    labels: list[int],
    *,
    epochs: int,
    epoch_images: int | None = None,
    batch_size: int,
    lr: float,
    init_cost: float,
    cost_multiplier: float,
    patience: int,
    attack_threshold: float,
    early_stop: bool,
    early_stop_threshold: float,
    early_stop_patience: int,
    seed: int,
    description: str = "neural_cleanse",
) -> dict[str, torch.Tensor]:
    """Reverse-engineer one trigger per label in ``labels``, all in one batch (module docstring).

    Args:
        images: clean uint8 (or float [0, 1]) images ``(N, C, H, W)`` the mini-batches are drawn
            from (:func:`flow`), each of ``min(batch_size, N)`` images.
        labels: the target labels, one trigger each.
        epoch_images: an epoch is ``min(epoch_images, N) // batch_size`` mini-batches (at least
            one); None: ``N``.
        seed: the order of the clean images comes from one generator seeded here, and each
            label's initial mask and pattern from ``seed`` and the label, so any grouping of
            labels gives the same result.
        description: the progress stage's name: one step per label and epoch goes to the active
            monitor (:func:`perturbd.progress.stage`); a label that stops early skips its rest.

    Returns: ``masks`` ``(K, H, W)``, ``patterns`` ``(K, C, H, W)``, ``norms`` ``(K,)`` (mask L1),
    ``reached`` ``(K,)`` bool, ``success`` ``(K,)`` (mean attack accuracy of the kept result's
    epoch, or of the last), ``epochs`` ``(K,)`` (epochs run), ``stopped`` ``(K,)`` bool (early stop).
    """
    device = model_device(model)
    k, shape = len(labels), tuple(images.shape[1:])
    inits = [initial_trigger(shape, lab, seed) for lab in labels]  # type: ignore[arg-type]
    mask_w = unsquash(torch.stack([m for m, _ in inits])).to(device)  # (K, 1, H, W)
    pattern_w = unsquash(torch.stack([p for _, p in inits])).to(device)  # (K, C, H, W)
    final_mask, final_pattern = squash(mask_w), squash(pattern_w)
    best_mask, best_pattern = final_mask.clone(), final_pattern.clone()
    best_acc, last_acc = torch.zeros(k), torch.zeros(k)
    sched = CostSchedule(
        k, init_cost=init_cost, multiplier=cost_multiplier, patience=patience, threshold=attack_threshold,
        early_stop=early_stop, early_stop_threshold=early_stop_threshold, early_stop_patience=early_stop_patience,
    )  # fmt: skip
    adam = _Adam([mask_w, pattern_w], lr)
    alive = torch.arange(k)
    target = torch.tensor(labels, device=device)
    batch = min(batch_size, len(images))
    steps = epoch_steps(len(images), batch, epoch_images)
    batches = flow(len(images), batch, torch.Generator().manual_seed(seed))
    with frozen(model), stage(description, k * epochs) as progress:  # one step per label and epoch
        for epoch in range(epochs):
            cost = sched.cost[alive].float().to(device)
            tgt = target[alive.to(device)]
            acc_sum = torch.zeros(len(alive), device=device)
            reg_sum = torch.zeros(len(alive), device=device)
            for _ in range(steps):
                x = to_float01(images[next(batches)].to(device))
                mw, pw = (p.detach().requires_grad_(True) for p in adam.params)
                mask, pattern = squash(mw), squash(pw)
                blended = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (R, B, C, H, W)
                out = model(blended.flatten(0, 1)).float().view(len(alive), batch, -1)
                ce = F.cross_entropy(out.flatten(0, 1), tgt.repeat_interleave(batch), reduction="none").view(len(alive), batch).mean(1)
                reg = mask.flatten(1).sum(1)
                adam.step(list(torch.autograd.grad((ce + cost * reg).sum(), [mw, pw])))
                acc_sum += (out.detach().argmax(-1) == tgt[:, None]).float().mean(1)
                reg_sum += reg.detach()
            acc = (acc_sum / steps).cpu()
            improved, stop = sched.step(alive, acc, (reg_sum / steps).cpu())
            mask, pattern = squash(adam.params[0]), squash(adam.params[1])
            better, rows = improved.to(device), alive[improved].to(device)
            best_mask[rows], best_pattern[rows] = mask[better], pattern[better]
            best_acc[alive[improved]] = acc[improved]
            last_acc[alive] = acc
            final_mask[alive.to(device)], final_pattern[alive.to(device)] = mask, pattern
            progress.advance(len(alive), images=len(alive) * steps * batch)
            if bool(stop.any()):
                progress.advance(int(stop.sum()) * (epochs - epoch - 1))  # the epochs a label that stops skips
                alive = alive[~stop]
                adam.keep((~stop).nonzero().flatten().to(device))
            if not len(alive):
                break
    reached = torch.isfinite(sched.best_reg)
    pick = reached.to(device)[:, None, None, None]
    masks = torch.where(pick, best_mask, final_mask)
    patterns = torch.where(pick, best_pattern, final_pattern)
    return {
        "masks": masks[:, 0].cpu(),
        "patterns": patterns.cpu(),
        "norms": masks.flatten(1).sum(1).cpu(),
        "reached": reached,
        "success": torch.where(reached, best_acc, last_acc),
        "epochs": sched.epochs.clone(),
        "stopped": sched.stopped.clone(),
    }


def epoch_steps(n: int, batch: int, epoch_images: int | None) -> int:
    """Mini-batches of ``batch`` in an epoch over ``n`` images: ``min(epoch_images, n) // batch``
    (``n // batch`` for None), at least one."""
    return max(1, min(n if epoch_images is None else epoch_images, n) // batch)


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """MAD anomaly index of each value, signed: positive when smaller than the median (the
    reference's ``|l1 − median| / (1.4826 · MAD)``, which it only flags below the median)."""
    x = norms.double().numpy()
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return torch.from_numpy((med - x) / max(mad, 1e-12)).float()


@register_defense
class NeuralCleanse(Defense):
    name = "neural_cleanse"
    kind = "model"

    class Params(DefenseParams):
        epochs: int = Field(
            1000, ge=1, le=100_000, description="epochs (the reference's STEPS), each of epoch_images // batch_size mini-batches"
        )
        epoch_images: int = Field(
            1000, ge=1, le=10_000_000, description="images an epoch blends (the reference's NB_SAMPLE), capped by the clean images"
        )
        batch_size: int = Field(32, ge=1, le=4096, description="clean images per mini-batch, blended with every label's trigger")
        lr: float = Field(0.1, gt=0, le=10, description="Adam step size on the tanh-parametrised mask and pattern")
        init_cost: float = Field(1e-3, gt=0, le=10, description="weight λ of the mask L1 once the attack succeeds (λ starts at 0)")
        cost_multiplier: float = Field(2.0, gt=1, le=10, description="λ is multiplied by this, or divided by its 1.5th power")
        patience: int = Field(5, ge=1, le=10_000, description="epochs at or below the threshold before λ changes")
        attack_threshold: float = Field(0.99, gt=0, le=1, description="mean attack accuracy of an epoch that counts as success")
        early_stop: bool = Field(True, description="stop a label once its best mask stops shrinking (after λ went up and down)")
        early_stop_threshold: float = Field(
            1.0, gt=0, le=10, description="an epoch whose best L1 is not below this × the best so far counts as stalled"
        )
        early_stop_patience: int = Field(25, ge=1, le=100_000, description="stalled epochs before an early stop")
        anomaly_threshold: float = Field(
            2.0, gt=0, le=100, description="flag labels below the median norm whose anomaly index exceeds this"
        )
        mode: Literal["batched", "loop"] = Field("batched", description="all labels in one batch, or label by label")
        n_clean: int | None = Field(
            None, ge=1, le=10_000_000, description="clean images the mini-batches are drawn from (None: all given, as the reference)"
        )
        seed: int | None = Field(None, ge=0, description="seeds the epochs' orders and initial triggers (None: derived from the run seed)")

    def fit(self, model: nn.Module, data: ImageDataset) -> NeuralCleanse:
        """Reverse-engineer a trigger for every label of ``data`` and flag the anomalous ones."""
        clean = data if self.n_clean is None else take(data, self.n_clean)
        self.clean_used_ = len(clean)
        batch = min(self.batch_size, len(clean))
        self.facts_ = {"clean_pool": len(clean), "batches_per_epoch": epoch_steps(len(clean), batch, self.epoch_images)}
        kw = dict(
            epochs=self.epochs, epoch_images=self.epoch_images, batch_size=self.batch_size, lr=self.lr, init_cost=self.init_cost,
            cost_multiplier=self.cost_multiplier, patience=self.patience, attack_threshold=self.attack_threshold,
            early_stop=self.early_stop, early_stop_threshold=self.early_stop_threshold, early_stop_patience=self.early_stop_patience,
            seed=self.rng_seed(),
        )  # fmt: skip
        labels = list(range(data.num_classes))
        started = time.perf_counter()
        if self.mode == "batched":
            res = reverse_triggers(model, clean.images, labels, **kw)
        else:
            parts = []
            with stage(f"{self.name} labels", len(labels)) as progress:
                for lab in labels:
                    parts.append(reverse_triggers(model, clean.images, [lab], **kw, description=f"{self.name} label {lab}"))
                    progress.advance()
            res = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        self.seconds_ = time.perf_counter() - started
        self.masks_, self.patterns_, self.norms_ = res["masks"], res["patterns"], res["norms"]
        self.reached_, self.success_ = res["reached"], res["success"]
        self.epochs_, self.stopped_ = res["epochs"], res["stopped"]
        self.scores_ = anomaly_index(self.norms_)
        self.flagged_ = self.scores_ > self.anomaly_threshold
        self.flagged_labels_ = torch.nonzero(self.flagged_).flatten().tolist()
        self.evidence_ = {
            "mask_l1": [round(float(v), 3) for v in self.norms_],
            "reached": [bool(v) for v in self.reached_],
            "epochs": [int(v) for v in self.epochs_],
            "stopped_early": [bool(v) for v in self.stopped_],
        }
        return self

    def trigger_of(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The recovered ``(mask (H, W), pattern (C, H, W))`` of ``label``."""
        return self.masks_[label], self.patterns_[label]

    def figures(self) -> Figures:
        """``<name>_trigger.png``: the recovered trigger of the most anomalous label;
        ``<name>_norms.png``: the reversed masks' L1 norms per label, flagged ones in red."""
        top = int(torch.argmax(self.scores_))
        mask, pattern = self.trigger_of(top)
        norms, scores, threshold = self.norms_.clone(), self.scores_.clone(), self.anomaly_threshold
        state = "flagged" if top in self.flagged_labels_ else "not flagged"
        title = f"label {top} ({state}, anomaly index {float(scores[top]):.2f})"
        return {
            f"{self.name}_trigger.png": lambda path: recovered_trigger_png(mask, pattern, path, title),
            f"{self.name}_norms.png": lambda path: mask_norms_png(norms, scores, path, threshold=threshold),
        }
