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

``blend="average"`` is the alternative ``(1 − α) x + α x_clean`` (in [0, 1]). The clean images
``fit`` receives are split in two: the first half is the overlay pool, the second half the
calibration inputs whose entropies set the threshold, so no image is blended with itself.

After ``fit``: ``threshold_`` (entropy, bits), ``scores_`` (suspicion = −entropy) and ``flagged_``
of the calibration images; :meth:`score` / :meth:`flag` screen new inputs.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense, take
from perturbd.errors import ConfigError
from perturbd.models import model_device


def normal_quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of a normal distribution fitted to ``values`` by maximum likelihood
    (mean and the standard deviation with ddof 0, as ``scipy.stats.norm.fit``)."""
    x = values.double()
    mu, sigma = float(x.mean()), float(x.std(unbiased=False)) if len(x) > 1 else 0.0
    return mu if sigma <= 0 else NormalDist(mu, sigma).inv_cdf(q)


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
        n_clean: int = Field(1000, ge=4, le=1_000_000, description="clean images: half overlay pool, half calibration")
        batch_size: int = Field(1024, ge=1, le=65536, description="blends per forward pass")
        seed: int | None = Field(None, ge=0, description="seeds the choice of overlays (None: derived from the run seed)")

    def fit(self, model: nn.Module, data: ImageDataset) -> Strip:
        """Keep ``model``, an overlay pool and the entropy threshold from clean images ``data``."""
        clean = take(data, self.n_clean)
        if len(clean) < 4:
            raise ConfigError(f"strip needs at least 4 clean images, got {len(clean)}")
        half = len(clean) // 2
        self.screened_model_ = model
        self.pool_ = clean.images[:half]
        self.clean_used_ = len(clean)
        entropy = self.entropy(clean.images[half:])
        self.threshold_ = normal_quantile(entropy, self.frr)
        self.scores_ = -entropy
        self.flagged_ = entropy < self.threshold_
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
        for i in range(0, len(images), per):
            x = to_float01(images[i : i + per].to(device))
            pick = torch.randint(0, len(pool), (len(x), self.overlays), generator=gen).to(device)
            blend = self.superimpose(x[:, None], pool[pick])
            p = self.screened_model_(blend.flatten(0, 1)).float().softmax(1)
            h = -(p * p.clamp_min(1e-12).log2()).sum(1).view(len(x), self.overlays).sum(1) / self.overlays
            out.append(h.cpu())
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
