"""SCALE-UP (Guo et al., ICLR 2023): input screening by scaled prediction consistency.

Each input's pixel values (float, in [0, 1]) are amplified by every factor ``n`` in ``scales`` and
clipped, ``clip(n · x, 0, 1)``, and the model's label on each amplified copy is compared with its
label on ``x``. The scaled prediction consistency ``SPC(x)`` is the share of amplified copies
that keep the label. A backdoor's trigger keeps dominating under amplification, so a triggered
input keeps its (target) label: its SPC is *high*; a clean image drifts to other labels.

- ``mode="data_free"`` (the paper's black-box setting, no clean data): an input is flagged when
  ``SPC(x) > threshold`` (``T = 0.5``, BackdoorBox's default); ``fit`` needs no clean image (``clean_used_``
  is 0) and only measures, on the clean images it is given, the FPR that ``T`` gives.
- ``mode="data_limited"`` (the paper's correction with a few clean images per class): the SPC of
  an input the model labels ``ŷ`` is standardised by the mean ``μ_ŷ`` and standard deviation
  ``σ_ŷ`` of the SPC of the clean images of class ``ŷ``: ``(SPC(x) − μ_ŷ) / σ_ŷ``, so that a
  class whose clean images are naturally scale-stable is not flagged wholesale. Its limit: where
  amplified images fall into the target class, the target's own clean images keep their label
  too (SPC 1), and the correction cancels the triggered inputs' lead (perturbd's planted test
  backdoors are such a case: ``tests/defenses/test_scale_up.py``).

Defaults and reference: the authors' code (JunfengGo/SCALE-UP, ``torch_model_wrapper.py``)
amplifies by ``n = 1, 2, …, 11`` and averages the agreement with the label of ``n = 1`` (the input
itself) over all eleven; BackdoorBox's ``SCALE_UP`` (by the same group) uses ``T = 0.5``. Where
perturbd departs from them:

- **scales**: ``1..11`` as the authors' code (``n = 1`` always agrees, so ``SPC ≥ 1/11``);
  BackdoorBox defaults to ``[3, 5, 7, 9, 11]``, which ``scales`` accepts;
- **no input noise**: the authors' script adds ``0.02 · U(0, 1)`` to every input before scaling;
  we score the input as given;
- **flag when SPC > T**, as the paper and BackdoorBox's docstring write it (BackdoorBox's code
  tests ``≥``; with the default scales SPC is a multiple of 1/11 and never equals 0.5);
- **data-limited statistics per predicted class**: the paper's data-limited mode takes a few
  benign images of each class; we standardise an input by the statistics of the class the model
  gives it (our reading of the paper), while BackdoorBox pools every class into one mean and
  standard deviation (a monotone rescaling: the same ranking as data-free) and counts agreement
  with the true labels. We group the clean images by the model's label on them (what a test
  input is grouped by; no labels needed) and take the first ``per_class``
  of each class as the reference; ``σ_c`` (ddof 1, as ``torch.std``) is floored at ``1 /
  len(scales)``, SPC's resolution, so that a class whose few clean images all share one SPC does
  not divide by zero, and a class with no reference image takes the pooled mean;
- **data-limited threshold**: BackdoorBox reads the standardised score against the same ``T``
  (``≥ 0.5`` standard deviations above the clean mean: about a third of clean inputs under a
  normal law); we set ``threshold_`` to the ``1 − frr``
  quantile (the next higher observed value) of the corrected scores of the clean images that were
  not reference images (of the reference images themselves when none are left), and flag scores
  above it: at most ``frr`` of those clean images are flagged (fewer where scores tie).

Batched: the input and its amplified copies of up to ``batch_size // (len(scales) + 1)`` inputs
go through the model in one forward pass.

After ``fit``: ``threshold_``, ``scores_`` / ``flagged_`` of the clean images it read (at most
``n_clean``; in data-limited mode the calibration images), ``facts_``: ``mode``, ``scales``,
``calibration_images``, ``calibration_fpr`` and, in data-limited mode, ``reference_images``;
``class_mean_`` / ``class_std_`` (data-limited). :meth:`score` / :meth:`flag` screen new inputs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense
from perturbd.errors import ConfigError
from perturbd.models import model_device
from perturbd.progress import stage


def exceedance_threshold(scores: torch.Tensor, frr: float) -> float:
    """The ``1 − frr`` quantile of clean ``scores`` (the next higher observed value): flagging the
    scores *above* it flags at most ``frr`` of them (fewer where scores tie at it)."""
    return float(torch.quantile(scores.double(), 1 - frr, interpolation="higher"))


def _whole_factors(scales: object) -> bool:
    """Whether ``scales`` is a list (or tuple) of 1 to 64 integers in [1, 255]."""
    if not isinstance(scales, (list, tuple)) or not 1 <= len(scales) <= 64:
        return False
    return all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 255 for n in scales)


@register_defense
class ScaleUp(Defense):
    name = "scale_up"
    kind = "input"

    class Params(DefenseParams):
        mode: Literal["data_free", "data_limited"] = Field(
            "data_free", description="data_free: SPC > threshold (no clean data); data_limited: SPC standardised per class on clean images"
        )
        scales: list[Annotated[int, Field(ge=1, le=255)]] = Field(
            default_factory=lambda: list(range(1, 12)),
            min_length=1,
            max_length=64,
            description="amplification factors n of clip(n·x, 0, 1) (authors' code: 1..11; BackdoorBox: 3, 5, 7, 9, 11)",
        )
        threshold: float = Field(0.5, gt=0, lt=1, description="data_free: flag inputs whose SPC exceeds this (the paper's T = 0.5)")
        frr: float = Field(0.01, gt=0, lt=1, description="data_limited: the clean inputs' share above the threshold (false rejection rate)")
        per_class: int = Field(10, ge=1, le=100_000, description="data_limited: clean reference images per predicted class (μ, σ of SPC)")
        n_clean: int = Field(2_000, ge=2, le=1_000_000, description="clean images read (data_limited: reference + calibration)")
        batch_size: int = Field(1024, ge=1, le=65536, description="images (inputs and their amplified copies) per forward pass")

    def __init__(self, **params: object) -> None:
        scales = params.get("scales")
        if scales is not None and not _whole_factors(scales):
            raise ConfigError(
                f"scale_up.scales must be 1 to 64 whole amplification factors in [1, 255], got {scales!r}; e.g. [3, 5, 7, 9, 11]"
            )
        super().__init__(**params)

    def fit(self, model: nn.Module, data: ImageDataset) -> ScaleUp:
        """Keep ``model``; in data-limited mode the per-class SPC statistics and the threshold from
        clean images ``data``; in data-free mode the fixed ``threshold`` and its FPR on ``data``."""
        if len(data) < 2:
            raise ConfigError(f"scale_up needs at least 2 clean images, got {len(data)}")
        self.screened_model_ = model
        images = data.images[: self.n_clean]
        spc, pred = self.consistency(images)
        self.facts_: dict[str, object] = {"mode": self.mode, "scales": list(self.scales)}
        if self.mode == "data_free":
            self.clean_used_ = 0
            self.threshold_ = float(self.threshold)
            scores = spc
        else:
            reference = self._reference(pred)
            self._class_stats(spc[reference], pred[reference])
            calibration = ~reference if bool((~reference).any()) else reference
            scores = self.corrected(spc[calibration], pred[calibration])
            self.threshold_ = exceedance_threshold(scores, self.frr)
            self.clean_used_ = len(images)
            self.facts_["reference_images"] = int(reference.sum())
        self.scores_ = scores
        self.flagged_ = self.flag_scores(scores)
        self.facts_.update(calibration_images=len(scores), calibration_fpr=float(self.flagged_.float().mean()))
        return self

    def _reference(self, pred: torch.Tensor) -> torch.Tensor:
        """Mask of the first ``per_class`` clean images of each predicted class."""
        rank = torch.zeros_like(pred)
        for c in torch.unique(pred):
            idx = torch.nonzero(pred == c).flatten()
            rank[idx] = torch.arange(len(idx))
        return rank < int(self.per_class)

    def _class_stats(self, spc: torch.Tensor, pred: torch.Tensor) -> None:
        """``class_mean_`` / ``class_std_`` per label (the pooled mean for a label with no reference image)."""
        floor = 1 / len(self.scales)
        mean = torch.full((self.num_classes_,), float(spc.mean()))
        std = torch.full((self.num_classes_,), floor)
        for c in torch.unique(pred).tolist():
            s = spc[pred == c].double()
            mean[c] = float(s.mean())
            std[c] = max(floor, float(s.std())) if len(s) > 1 else floor
        self.class_mean_, self.class_std_ = mean, std

    def corrected(self, spc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Data-limited score: ``(SPC − μ_ŷ) / σ_ŷ`` for inputs the model labels ``pred``."""
        return (spc - self.class_mean_[pred]) / self.class_std_[pred]

    @torch.no_grad()
    def consistency(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(SPC, label)`` of each input: the share of its amplified copies that keep the model's
        label on it (float32 ``(N,)``) and that label (int64 ``(N,)``), on the CPU."""
        model = self.screened_model_
        device = model_device(model)
        model.eval()
        factors = torch.tensor([float(n) for n in self.scales], device=device).view(-1, 1, 1, 1, 1)
        per = max(1, self.batch_size // (len(self.scales) + 1))
        spc, labels = [], []
        with stage(f"{self.name} scaled predictions", -(-len(images) // per)) as progress:
            for i in range(0, len(images), per):
                x = to_float01(images[i : i + per].to(device))
                scaled = (factors * x[None]).clamp_(0, 1)
                logits = model(torch.cat([x[None], scaled]).flatten(0, 1))
                self.num_classes_ = int(logits.shape[1])
                pred = logits.argmax(1).view(len(self.scales) + 1, len(x))
                spc.append((pred[1:] == pred[0]).float().mean(0).cpu())
                labels.append(pred[0].cpu())
                progress.advance(images=len(x) * (len(self.scales) + 1))
        if not spc:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.cat(spc), torch.cat(labels)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Suspicion of each input (higher = more likely triggered): SPC (data-free) or the
        per-class standardised SPC (data-limited)."""
        spc, pred = self.consistency(images)
        return spc if self.mode == "data_free" else self.corrected(spc, pred)

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs whose score exceeds the threshold."""
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The inputs of :meth:`score`'s ``scores`` that :meth:`flag` flags."""
        return scores > self.threshold_
