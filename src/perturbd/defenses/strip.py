"""STRIP (Gao et al., ACSAC 2019): input screening at inference.

Each input is superimposed on ``overlays`` random clean images (the blend ``(1 − α) x + α x_clean``,
float [0, 1]) and the entropy of the model's predictions on the blends is
averaged. A triggered input keeps its target label under the blends (the trigger dominates), so
its entropy is *low*. ``fit`` draws the overlay pool and the threshold from clean images: the
``fpr``-quantile of the clean entropies, so about ``fpr`` of clean inputs are flagged.

After ``fit``: ``threshold_`` (entropy, nats), ``scores_`` (suspicion = −entropy) and ``flagged_``
of the calibration images; :meth:`score` / :meth:`flag` screen new inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense, take
from perturbd.errors import ConfigError
from perturbd.models import model_device


@register_defense
class Strip(Defense):
    name = "strip"
    kind = "input"

    class Params(DefenseParams):
        overlays: int = Field(16, ge=1, le=1000, description="clean images superimposed on each input")
        alpha: float = Field(0.5, gt=0, lt=1, description="weight of the clean image in a blend")
        fpr: float = Field(0.05, gt=0, lt=1, description="share of clean inputs flagged (sets the threshold)")
        n_clean: int = Field(1000, ge=4, le=1_000_000, description="clean images: half overlay pool, half calibration")
        batch_size: int = Field(1024, ge=1, le=65536, description="blends per forward pass")
        seed: int = Field(0, ge=0, description="seeds the choice of overlays")

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
        self.threshold_ = float(torch.quantile(entropy.double(), self.fpr))
        self.scores_ = -entropy
        self.flagged_ = entropy < self.threshold_
        return self

    @torch.no_grad()
    def entropy(self, images: torch.Tensor) -> torch.Tensor:
        """Mean prediction entropy (nats) of each input over its blends, ``(N,)`` float32."""
        device = model_device(self.screened_model_)
        gen = torch.Generator().manual_seed(self.seed)
        pool = to_float01(self.pool_).to(device)
        self.screened_model_.eval()
        out = []
        per = max(1, self.batch_size // self.overlays)
        for i in range(0, len(images), per):
            x = to_float01(images[i : i + per].to(device))
            pick = torch.randint(0, len(pool), (len(x), self.overlays), generator=gen).to(device)
            blend = (1 - self.alpha) * x[:, None] + self.alpha * pool[pick]
            p = self.screened_model_(blend.flatten(0, 1)).float().softmax(1)
            h = -(p * p.clamp_min(1e-12).log()).sum(1).view(len(x), self.overlays).mean(1)
            out.append(h.cpu())
        return torch.cat(out) if out else torch.empty(0)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Suspicion of each input (−entropy; higher = more likely triggered)."""
        return -self.entropy(images)

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs whose entropy falls below the clean threshold."""
        return self.entropy(images) < self.threshold_
