"""IBD-PSC (Hou et al., ICML 2024): input screening by parameter-oriented scaling consistency.

Amplifying the BatchNorm parameters (weight and bias × ``scale``) of a model's last layers wrecks
its predictions on clean inputs, but a triggered input keeps its (target) label with high
confidence: the backdoor's shortcut is robust to the amplification. The PSC of an input is the
mean, over ``n`` amplified models, of the softmax probability of the label the *original* model
predicts; a high PSC flags the input.

As the authors' code (THUYimingLi/BackdoorBox @ d3cf1842, ``core/defenses/IBD_PSC.py``) does:

- the amplifiable layers are the BatchNorm layers in ``named_modules()`` order, counted from the
  last; amplifying a layer multiplies its weight and bias by ``scale`` (ω = 1.5);
- **adaptive layer selection** on the defender's clean images: the smallest ``k`` in
  ``1 … L − 1`` for which amplifying the last ``k`` layers misclassifies more than ``xi``
  (ξ = 0.6) of them (error against their true labels);
- the ``n`` (5) amplified models amplify the last ``k + 1, …, k + n`` layers (capped at all
  ``L``, as the authors' slice is), and PSC is the mean of their probabilities of the original
  prediction;
- an input is flagged when ``PSC ≥ T`` (T = 0.9), the paper's fixed threshold
  (``threshold="fixed"``, the default).

Where perturbd departs from it:

- **no depth reaches ξ**: BackdoorBox's selection returns nothing (and its scoring fails); this
  takes ``k = L`` (every model then amplifies every layer), as the authors' later toolbox code
  does (``prob_start`` returns ``layer_num``); ``facts_["start_error"]`` says the error reached;
- **models without BatchNorm** (``lenet5``, many users' networks): the same procedure over the
  ``Conv2d`` layers (weight and bias × ω), the alternative the authors' code leaves commented
  out; ``facts_["layer_type"]`` says which was used. A model with neither is a one-line error;
- **any BatchNorm** (1-D, 2-D, 3-D, subclasses such as whitenet's, and TorchScript modules by
  their original type), with a learned scale (``affine``); BackdoorBox counts ``BatchNorm2d`` only;
- ``threshold="frr"`` (not the paper's): ``threshold_`` is the ``1 − frr`` quantile of the PSC
  of the clean calibration images, as STRIP's threshold is set for a false rejection rate, and
  an input is flagged when its PSC lies *above* it (confident clean inputs can tie at PSC 1);
- the amplification is applied in place and undone after each model's pass (as the authors'
  later code does), so the model given is left as it was;
- the clean images are the first ``n_clean`` the defender holds (this project's choice: 1,000);
  they both select the layers and calibrate (``scores_``, ``calibration_fpr``).

After ``fit``: ``threshold_`` (PSC), ``scores_`` (PSC) and ``flagged_`` of the calibration images;
``layers_`` (names of the amplifiable layers, last first), ``start_`` (k); ``facts_``:
``layer_type``, ``amplifiable_layers``, ``start_layers``, ``start_error``, ``calibration_images``
and ``calibration_fpr``. :meth:`score` / :meth:`flag` screen new inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast

import torch
import torch.nn as nn
from pydantic import Field

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams, register_defense, take
from perturbd.errors import ConfigError
from perturbd.models import model_device
from perturbd.progress import stage

_BATCHNORMS = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


def _type_name(module: nn.Module) -> str:
    """A module's layer type; a TorchScript module's is its ``original_name``."""
    return str(getattr(module, "original_name", type(module).__name__))


def _has_scale(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) and isinstance(getattr(module, "bias", None), torch.Tensor)


def amplifiable_layers(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """The layer type amplified (``"BatchNorm"``, else ``"Conv2d"``) and those layers with a
    weight and a bias, as ``(name, module)`` from the last in ``named_modules()`` order to the first."""
    modules = [(n, m) for n, m in model.named_modules() if m is not model]
    bn = [(n, m) for n, m in modules if (isinstance(m, nn.modules.batchnorm._BatchNorm) or _type_name(m) in _BATCHNORMS) and _has_scale(m)]
    if bn:
        return "BatchNorm", bn[::-1]
    conv = [(n, m) for n, m in modules if (isinstance(m, nn.Conv2d) or _type_name(m) == "Conv2d") and _has_scale(m)]
    if conv:
        return "Conv2d", conv[::-1]
    raise ConfigError(
        f"ibd_psc needs a model with BatchNorm or Conv2d layers that have a weight and a bias to amplify, found none in "
        f"{type(model).__name__}; choose another input screen (e.g. strip)"
    )


@contextmanager
def amplified(layers: Sequence[nn.Module], scale: float) -> Iterator[None]:
    """Within the block, the weight and bias of ``layers`` multiplied by ``scale``; restored
    exactly (from copies) on leaving it, whatever happens inside."""
    params = [p for m in layers for p in (cast(torch.Tensor, m.weight), cast(torch.Tensor, m.bias))]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.mul_(scale)
        yield
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)


@register_defense
class IbdPsc(Defense):
    name = "ibd_psc"
    kind = "input"

    class Params(DefenseParams):
        n: int = Field(5, ge=1, le=100, description="amplified models the PSC averages over (the paper: 5)")
        xi: float = Field(0.6, gt=0, lt=1, description="clean error rate the adaptive layer selection must exceed (the paper: 0.6)")
        scale: float = Field(1.5, gt=1, le=100, description="factor on the weight and bias of each amplified layer (the paper: 1.5)")
        threshold: Literal["fixed", "frr"] = Field(
            "fixed",
            description="fixed: flag PSC >= T (the paper's); frr: T from the clean calibration images for a false rejection rate frr",
        )
        T: float = Field(0.9, gt=0, lt=1, description="PSC at or above which an input is flagged when threshold='fixed' (the paper: 0.9)")
        frr: float = Field(0.01, gt=0, lt=1, description="false rejection rate the threshold is set for when threshold='frr'")
        n_clean: int = Field(1000, ge=2, le=1_000_000, description="clean images that select the layers and calibrate")
        batch_size: int = Field(256, ge=1, le=65536, description="images per forward pass")

    def fit(self, model: nn.Module, data: ImageDataset) -> IbdPsc:
        """Choose the amplified layers from clean images ``data`` and set the threshold."""
        clean = take(data, self.n_clean)
        if len(clean) < 2:
            raise ConfigError(f"ibd_psc needs at least 2 clean images, got {len(clean)}")
        kind, layers = amplifiable_layers(model)
        self.screened_model_ = model
        self.layers_ = [name for name, _ in layers]
        self.modules_ = [m for _, m in layers]
        self.clean_used_ = len(clean)
        self.start_, error = self.select_start(clean)
        self.scores_ = self.score(clean.images)
        self.threshold_ = self.T if self.threshold == "fixed" else float(torch.quantile(self.scores_.double(), 1 - self.frr))
        self.flagged_ = self.flag_scores(self.scores_)
        self.facts_ = {
            "layer_type": kind,
            "amplifiable_layers": len(layers),
            "start_layers": self.start_,
            "start_error": round(error, 4),
            "calibration_images": len(clean),
            "calibration_fpr": float(self.flagged_.float().mean()),
        }
        return self

    @torch.no_grad()
    def _logits(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """The screened model's float logits, batch by batch (eval mode)."""
        device = model_device(self.screened_model_)
        self.screened_model_.eval()
        for i in range(0, len(images), self.batch_size):
            yield self.screened_model_(to_float01(images[i : i + self.batch_size].to(device))).float().cpu()

    def select_start(self, clean: ImageDataset) -> tuple[int, float]:
        """``(k, error)``: the fewest last layers whose amplification misclassifies more than
        ``xi`` of ``clean``, and that error (``k = L`` and its error when no depth reaches ``xi``)."""
        total = len(self.modules_)
        error = 0.0
        with stage(f"{self.name} layer selection", total) as progress:
            for k in progress.over(range(1, total + 1)):
                with amplified(self.modules_[:k], self.scale):
                    pred = torch.cat(list(self._logits(clean.images))).argmax(1)
                error = float((pred != clean.labels).float().mean())
                if error > self.xi:
                    return k, error
        return total, error

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """PSC of each input, float64 ``(N,)`` in [0, 1] (higher = more likely triggered): the mean
        over the ``n`` amplified models of the probability of the original model's label (softmax
        in float64: in float32 many confident inputs tie at exactly 1)."""
        if len(images) == 0:
            return torch.empty(0, dtype=torch.float64)
        pred = torch.cat(list(self._logits(images))).argmax(1)
        psc = torch.zeros(len(images), dtype=torch.float64)
        with stage(f"{self.name} amplified models", self.n) as progress:
            for j in progress.over(range(self.n)):
                with amplified(self.modules_[: self.start_ + 1 + j], self.scale):
                    p = torch.cat(list(self._logits(images))).double().softmax(1)
                psc += p.gather(1, pred[:, None]).squeeze(1)
        out: torch.Tensor = psc / self.n
        return out

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs whose PSC reaches the threshold."""
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The inputs of :meth:`score`'s ``scores`` (PSC) that :meth:`flag` flags: PSC ≥ T
        (the paper's), or above the clean quantile (``threshold="frr"``: ties at it are not flagged,
        so at most ``frr`` of the calibration images are)."""
        return scores >= self.threshold_ if self.threshold == "fixed" else scores > self.threshold_
