"""The metrics of DESIGN.md, one definition each.

- ``clean_accuracy``: top-1 accuracy on the clean test set.
- ``target_rate``: the fraction of images (none of them of class t) a model sends to t once a
  perturbation is applied: the one definition behind the ASR, an adaptive mask's fooling rate and
  the audit's universal-perturbation shift.
- ``attack_success_rate``: over test images whose true label ≠ t, the fraction classified t
  after the trigger is applied (uint8 images: applied and rounded, as in a shipped file).
- ``clean_model_asr``: the same ASR measured on the clean twin.
- ``accuracy_loss``: clean_accuracy(clean twin) − clean_accuracy(backdoored).
- stealth, per poisoned image in 0–255 pixel units: L∞, L2, PSNR (dB), SSIM; mean and worst.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torchmetrics.functional.image import structural_similarity_index_measure

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import DataError
from perturbd.train import predict

if TYPE_CHECKING:
    from perturbd.triggers import Trigger


Sources = Sequence[int] | None  # the classes a source-specific attack poisons (None: all)


def clean_accuracy(model: nn.Module, test: ImageDataset, precision: str = "auto") -> float:
    """Top-1 accuracy of ``model`` on ``test``, in [0, 1] (``precision`` as ``train.precision``)."""
    return float((predict(model, test.images, precision=precision) == test.labels).float().mean())


def attacked(labels: torch.Tensor, target: int, sources: Sources = None) -> torch.Tensor:
    """Which labels an attack toward ``target`` from ``sources`` (None: every class) is about:
    not the target, and one of the sources."""
    mask = labels != target
    if sources is not None:
        mask &= torch.isin(labels, torch.tensor(list(sources), dtype=labels.dtype))
    return mask


def outside(data: ImageDataset, target: int, sources: Sources = None) -> torch.Tensor:
    """The images of ``data`` an attack toward ``target`` from ``sources`` is about (:func:`attacked`)."""
    return data.images[attacked(data.labels, target, sources)]


def target_rate(
    model: nn.Module, images: torch.Tensor, apply: Callable[[torch.Tensor], torch.Tensor], target: int, precision: str = "auto"
) -> float:
    """Fraction of ``images`` (none of class ``target``) that ``model`` sends to ``target`` once
    ``apply`` has perturbed them, in [0, 1].

    ``apply`` maps a batch to its perturbed copy (:meth:`Trigger.apply` adds, clips and, for a
    quantized trigger, rounds, as a shipped image file would be).
    """
    if len(images) == 0:
        raise DataError(f"no image outside the target class {target} to perturb: the rate toward {target} is undefined; give more images")
    return float((predict(model, apply(images), precision=precision) == target).float().mean())


def attack_success_rate(model: nn.Module, test: ImageDataset, trigger: Trigger, target: int, sources: Sources = None, precision: str = "auto") -> float:
    """Fraction of the test images of the source classes (default: every class but the target)
    sent to ``target`` once triggered, in [0, 1]."""
    return target_rate(model, outside(test, target, sources), trigger.apply, target, precision)


def non_source_rate(model: nn.Module, test: ImageDataset, trigger: Trigger, target: int, sources: Sequence[int], precision: str = "auto") -> float | None:
    """For a source-specific attack: the fraction of the *other* non-target test images sent to
    ``target`` once triggered (None when every non-target class is a source)."""
    others = attacked(test.labels, target) & ~attacked(test.labels, target, sources)
    if not bool(others.any()):
        return None
    return target_rate(model, test.images[others], trigger.apply, target, precision)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Images as float64 in 0–255 pixel units (uint8 exactly; float [0, 1] scaled by 255)."""
    if images.dtype == torch.uint8:
        return images.double()
    return to_float01(images).double() * 255.0


def psnr_each(clean: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """PSNR (dB; peak 255) of each poisoned image against its clean original; ``inf`` where unchanged."""
    return _psnr((_pixels(poisoned) - _pixels(clean)).flatten(1))


def _psnr(diff: torch.Tensor) -> torch.Tensor:
    """PSNR (dB; peak 255) of each row of pixel differences ``(N, D)`` in 0–255 units."""
    return 10 * torch.log10(255.0**2 / diff.pow(2).mean(1))


def mean_finite(values: torch.Tensor) -> float:
    """The mean of the finite ``values`` (``inf`` when none is finite): the mean PSNR of a batch."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.inf


def stealth(clean: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """Distortion of each poisoned image against its clean original, in 0–255 pixel units.

    Returns mean and worst over images of L∞, L2 (over all pixels and channels), PSNR (dB; peak
    255) and SSIM (11×11 Gaussian window, data range 255). "Worst" is the largest norm and the
    smallest PSNR / SSIM. An image left unchanged (by clipping) has infinite PSNR and is left out
    of the mean PSNR. PSNR is computed here: torchmetrics' differs from it by up to 5e-6 dB.
    """
    if clean.shape != poisoned.shape or len(clean) == 0:
        raise DataError(f"stealth needs matching non-empty batches, got {tuple(clean.shape)} and {tuple(poisoned.shape)}")
    a, b = _pixels(clean), _pixels(poisoned)
    diff = (b - a).flatten(1)
    linf = diff.abs().amax(1)
    l2 = diff.norm(dim=1)
    psnr = _psnr(diff)
    side = min(clean.shape[-2:])
    kernel = 11 if side >= 11 else (side if side % 2 else side - 1)
    ssim = structural_similarity_index_measure(b.float(), a.float(), data_range=255.0, kernel_size=kernel, reduction="none")
    return {
        "linf_mean": float(linf.mean()),
        "linf_max": float(linf.max()),
        "l2_mean": float(l2.mean()),
        "l2_max": float(l2.max()),
        "psnr_mean": mean_finite(psnr),
        "psnr_min": float(psnr.min()),
        "ssim_mean": float(ssim.mean()),
        "ssim_min": float(ssim.min()),
    }
