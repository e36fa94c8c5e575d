"""TeCo (Liu et al., CVPR 2023): input screening by corruption-robustness consistency.

Each input is corrupted by every corruption in ``corruptions`` (``"all"``: ImageNet-C's fifteen,
the default) at severities 1 to 5, and the model labels each corrupted copy. Per corruption, the
*flip severity* is the first severity whose label differs from the label of the input itself
(6 when none does). A clean image loses its label at about the same severity under every
corruption; a triggered input keeps the target label under some corruptions (those that leave
the trigger intact) and loses it at once under others (those that destroy it). TeCo's score is
the standard deviation (ddof 0) of the flip severities over the corruptions: *high* for a
triggered input. It reads only hard labels. Its limit: a trigger that survives every corruption
keeps the target at every severity (spread 0), below a clean image whose label flips unevenly:
the white 3 × 3 patch on perturbd's tiny synthetic bars scores below chance, the invisible grid
well above it (``tests/defenses/test_teco.py``).

As the authors' code (CGCL-codes/TeCo, ``BackdoorBench-v1.0-merge/defense/teco/teco.py``):
the fifteen corruptions in its order, severities 1–5, 6 for a corruption that never flips the
label, ``np.std`` of the flip severities. Where perturbd departs from it:

- **the corruptions are ours, in torch** (:mod:`perturbd.defenses.corruptions`, which names each
  difference from the ``imagecorruptions`` package the authors call): that package is broken
  with current scikit-image, refuses images under 32 × 32 pixels and works one image at a time;
- **each corruption is applied to the input**: the authors' script assigns every corrupted image
  back into the test set's list it read (``x[i] = dg(x[i], args)`` on ``result['bd_test']['x']``),
  so, as the code reads, each severity and each later corruption is applied on top of the
  earlier ones; we corrupt the input itself each time, as
  the paper defines the test;
- **a threshold**: the paper and its code report AUROC only; for the ``InputScreen`` protocol,
  ``fit`` on clean images sets ``threshold_`` to the ``1 − frr`` quantile (the next higher
  observed value) of their scores, and inputs scoring above it are flagged: at most ``frr`` of
  those clean images are (fewer where scores tie, which integer flip severities often do);
- random draws (noises, blur angles, fields) come from a generator seeded by ``seed``, restarted
  on every call: the same images get the same corruptions, a clean image and its triggered copy
  at the same position get the same draws.

Cost: 76 forward passes per input (15 corruptions × 5 severities, plus the input), each corruption
batched over ``batch_size`` inputs on their device; glass_blur's pixel swaps are a Python loop over
pixel positions (batched over the images), the slowest part on large images.

After ``fit``: ``threshold_``, ``scores_`` / ``flagged_`` of the clean calibration images (at
most ``n_clean``), ``facts_``: ``calibration_images``, ``calibration_fpr``, ``corruptions``
(how many); :meth:`score` / :meth:`flag` screen new inputs; :meth:`flip_severity` gives the
per-corruption flip severities, in the order of ``names_`` (the corruptions used).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense
from perturbd.defenses.corruptions import CORRUPTIONS, corrupt
from perturbd.defenses.scale_up import exceedance_threshold
from perturbd.errors import ConfigError
from perturbd.models import model_device
from perturbd.progress import stage
from perturbd.registry import suggest

CorruptionName = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]  # fmt: skip
SEVERITIES = range(1, 6)
"""ImageNet-C's severities, TeCo's; a corruption that never flips the label scores one more (6)."""


@register_defense
class TeCo(Defense):
    name = "teco"
    kind = "input"

    class Params(DefenseParams):
        corruptions: Literal["all"] | Annotated[list[CorruptionName], Field(min_length=2, max_length=15)] = Field(
            "all",
            description="'all': ImageNet-C's fifteen in TeCo's order (noises, blurs, weather, digital); or a list of 2 or more of them",
        )
        frr: float = Field(0.01, gt=0, lt=1, description="the clean inputs' share above the threshold (false rejection rate)")
        n_clean: int = Field(2_000, ge=2, le=1_000_000, description="clean images whose scores set the threshold")
        batch_size: int = Field(1024, ge=1, le=65536, description="images corrupted together and per forward pass")
        seed: int | None = Field(None, ge=0, description="seeds the corruptions' random draws (None: derived from the run seed)")

    def __init__(self, **params: object) -> None:
        names = params.get("corruptions")
        if isinstance(names, str) and names != "all":
            raise ConfigError(f"teco.corruptions must be 'all' or a list of corruption names, got {names!r}; e.g. [{names!r}, 'fog']")
        for name in names if isinstance(names, (list, tuple)) else []:
            if name not in CORRUPTIONS:
                raise ConfigError(f"teco.corruptions: unknown corruption {name!r}{suggest(str(name), list(CORRUPTIONS))}")
        super().__init__(**params)
        self.names_: list[str] = list(CORRUPTIONS) if self.corruptions == "all" else list(self.corruptions)
        if len(set(self.names_)) != len(self.names_):
            raise ConfigError(f"teco.corruptions names a corruption twice, got {self.corruptions}; name each once")

    def fit(self, model: nn.Module, data: ImageDataset) -> TeCo:
        """Keep ``model`` and set the threshold from the scores of clean images ``data``."""
        if len(data) < 2:
            raise ConfigError(f"teco needs at least 2 clean images, got {len(data)}")
        self.screened_model_ = model
        images = data.images[: self.n_clean]
        self.clean_used_ = len(images)
        scores = self.score(images)
        self.threshold_ = exceedance_threshold(scores, self.frr)
        self.scores_ = scores
        self.flagged_ = self.flag_scores(scores)
        self.facts_ = {
            "calibration_images": len(images),
            "calibration_fpr": float(self.flagged_.float().mean()),
            "corruptions": len(self.names_),
        }
        return self

    @torch.no_grad()
    def flip_severity(self, images: torch.Tensor) -> torch.Tensor:
        """Per input and corruption, the first severity (1–5) whose label differs from the
        input's own, 6 when none does: int64 ``(N, len(corruptions))`` on the CPU."""
        model = self.screened_model_
        device = model_device(model)
        model.eval()
        gen = torch.Generator().manual_seed(self.rng_seed())
        never = SEVERITIES[-1] + 1
        out = []
        steps = -(-len(images) // self.batch_size) * len(self.names_) * len(SEVERITIES)
        with stage(f"{self.name} corruptions", steps) as progress:
            for i in range(0, len(images), self.batch_size):
                x = to_float01(images[i : i + self.batch_size].to(device))
                label = model(x).argmax(1)
                flips = torch.full((len(x), len(self.names_)), never, dtype=torch.long, device=device)
                for k, name in enumerate(self.names_):
                    for s in SEVERITIES:
                        moved = model(corrupt(x, name, s, gen)).argmax(1) != label
                        first = moved & (flips[:, k] == never)
                        flips[first, k] = s
                        progress.advance(images=len(x))
                out.append(flips.cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.names_), dtype=torch.long)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Suspicion of each input (higher = more likely triggered): the standard deviation
        (ddof 0) of its flip severities over the corruptions, float32 ``(N,)``."""
        return self.flip_severity(images).float().std(1, unbiased=False)

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs whose score exceeds the threshold."""
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The inputs of :meth:`score`'s ``scores`` that :meth:`flag` flags."""
        return scores > self.threshold_
