"""STRIP (Gao et al., ACSAC 2019): input screening at inference, as the authors' code runs it.

Each input is superimposed on ``overlays`` clean images drawn at random from a held-out pool, and
the Shannon entropy (bits) of the model's prediction on each blend is summed over the blends and
divided by their number. A triggered input keeps its target label under the blends (the trigger
dominates), so its entropy is *low*.

As the reference (garrisongys/STRIP @ 6588a385, ``STRIP_CIFAR10DeepArchit_Tb.ipynb``) does:

- ``blend="add"``: ``cv2.addWeighted(background, 1, overlay, 1, 0)`` on float images in [0, 1],
  i.e. the plain sum ``x + x_clean``, not clipped (values up to 2);
- 100 overlays per input, drawn from clean images that are not the ones scored;
- entropy ``−Σ p log₂ p`` per blend, summed over the N blends and divided by N;
- threshold: a normal distribution fitted (maximum likelihood) to the entropies of clean inputs,
  and its ``frr`` quantile (``norm.ppf(0.01)``: a false rejection rate of 1 %, Gao's preset).

- an overlay pool of ``n_overlay`` (10,000) clean images and ``n_calibration`` (2,000) clean
  inputs whose entropies set the threshold, as Gao et al.'s evaluation.

The clean images ``fit`` receives are split in two: the first ``n_overlay`` are the overlay pool,
the next ``n_calibration`` the calibration inputs, so no image is blended with itself.

Where perturbd departs from it:

- **fewer clean images**: where the defender holds fewer than ``n_overlay + n_calibration``
  (mnist5k's training split: under 5,000), both are scaled down in proportion
  (:func:`split_pool`); ``facts_`` says how many were used;
- ``blend="average"`` is an alternative to Gao's sum: ``(1 − α) x + α x_clean`` (in [0, 1]).

After ``fit``: ``threshold_`` (entropy, bits), ``scores_`` (suspicion = −entropy) and ``flagged_``
of the calibration images; ``facts_``: ``overlay_images`` and ``calibration_images`` (how many
were used) and ``calibration_fpr`` (the share of calibration images flagged: the FPR the
threshold gives on the images it was fitted to, beside the target ``frr``); :meth:`score` /
:meth:`flag` screen new inputs.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense
from perturbd.errors import ConfigError
from perturbd.models import model_device
from perturbd.progress import stage


def normal_quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of a normal distribution fitted to ``values`` by maximum likelihood
    (mean and the standard deviation with ddof 0, as ``scipy.stats.norm.fit``)."""
    x = values.double()
    mu, sigma = float(x.mean()), float(x.std(unbiased=False)) if len(x) > 1 else 0.0
    return mu if sigma <= 0 else NormalDist(mu, sigma).inv_cdf(q)


def split_pool(available: int, overlay: int, calibration: int) -> tuple[int, int]:
    """Clean images for the overlay pool and for calibration, out of ``available`` (at least 4):
    ``(overlay, calibration)`` when there are enough, else both scaled down in proportion (the
    calibration share rounded down), at least 2 each."""
    if available >= overlay + calibration:
        return overlay, calibration
    cal = min(max(2, available * calibration // (overlay + calibration)), available - 2)
    return available - cal, cal


@register_defense
class Strip(Defense):
    name = "strip"
    kind = "input"

    class Params(DefenseParams):
        overlays: int = Field(100, ge=1, le=1000, description="clean images superimposed on each input (Gao: 100)")
        blend: Literal["add", "average"] = Field(
            "add", description="add: x + x_clean, unclipped (Gao's); average: (1 − alpha) x + alpha x_clean"
        )
        alpha: float = Field(0.5, gt=0, lt=1, description="weight of the clean image in an 'average' blend")
        frr: float = Field(0.01, gt=0, lt=1, description="false rejection rate: quantile of the normal fit of clean entropies (Gao: 0.01)")
        n_overlay: int = Field(10_000, ge=2, le=1_000_000, description="clean images the overlays are drawn from (Gao: 10,000)")
        n_calibration: int = Field(2_000, ge=2, le=1_000_000, description="clean inputs whose entropies set the threshold (Gao: 2,000)")
        batch_size: int = Field(1024, ge=1, le=65536, description="blends per forward pass")
        seed: int | None = Field(None, ge=0, description="seeds the choice of overlays (None: derived from the run seed)")

    def fit(self, model: nn.Module, data: ImageDataset) -> Strip:
        """Keep ``model``, an overlay pool and the entropy threshold from clean images ``data``."""
        if len(data) < 4:
            raise ConfigError(f"strip needs at least 4 clean images, got {len(data)}")
        overlay, calibration = split_pool(len(data), self.n_overlay, self.n_calibration)
        self.screened_model_ = model
        self.pool_ = data.images[:overlay]
        self.clean_used_ = overlay + calibration
        entropy = self.entropy(data.images[overlay : overlay + calibration])
        self.threshold_ = normal_quantile(entropy, self.frr)
        self.scores_ = -entropy
        self.flagged_ = entropy < self.threshold_
        self.facts_ = {
            "overlay_images": overlay,
            "calibration_images": calibration,
            "calibration_fpr": float(self.flagged_.float().mean()),
        }
        return self

    def superimpose(self, x: torch.Tensor, overlay: torch.Tensor) -> torch.Tensor:
        """Blend float [0, 1] inputs ``x`` ``(N, 1, C, H, W)`` with ``overlay`` ``(N, M, C, H, W)``."""
        if self.blend == "add":
            return x + overlay
        alpha: float = self.alpha
        return (1 - alpha) * x + alpha * overlay

    @torch.no_grad()
    def entropy(self, images: torch.Tensor) -> torch.Tensor:
        """Entropy (bits) of the predictions on each input's blends, summed and divided by the
        number of blends, ``(N,)`` float32."""
        device = model_device(self.screened_model_)
        gen = torch.Generator().manual_seed(self.rng_seed())
        pool = to_float01(self.pool_).to(device)
        self.screened_model_.eval()
        out = []
        per = max(1, self.batch_size // self.overlays)
        with stage(f"{self.name} entropy", -(-len(images) // per)) as progress:  # one step per forward pass of blends
            for i in range(0, len(images), per):
                x = to_float01(images[i : i + per].to(device))
                pick = torch.randint(0, len(pool), (len(x), self.overlays), generator=gen).to(device)
                blend = self.superimpose(x[:, None], pool[pick])
                p = self.screened_model_(blend.flatten(0, 1)).float().softmax(1)
                h = -(p * p.clamp_min(1e-12).log2()).sum(1).view(len(x), self.overlays).sum(1) / self.overlays
                out.append(h.cpu())
                progress.advance(images=len(x) * self.overlays)
        return torch.cat(out) if out else torch.empty(0)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Suspicion of each input (−entropy; higher = more likely triggered)."""
        return -self.entropy(images)

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs whose entropy falls below the clean threshold."""
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The inputs of :meth:`score`'s ``scores`` (−entropy) that :meth:`flag` flags."""
        return -scores < self.threshold_
