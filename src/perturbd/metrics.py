"""The metrics of DESIGN.md, one definition each.

- ``clean_accuracy``: top-1 accuracy on the clean test set.
- ``target_rate``: the fraction of images (none of them of class t) a model sends to t once a
  perturbation is applied: the one definition behind the ASR, an adaptive mask's fooling rate and
  the audit's universal-perturbation shift.
- ``attack_success_rate``: over test images whose true label ≠ t, the fraction classified t
  after the trigger is applied (uint8 images: applied and rounded, as in a shipped file).
- ``clean_model_asr``: the same ASR measured on the clean twin.
- ``accuracy_loss``: clean_accuracy(clean twin) − clean_accuracy(backdoored).
- ``robust_accuracy`` (R-Acc): over the same triggered images as the ASR, the fraction classified
  as their true label (BackdoorBench's "RA").
- ``defense_effectiveness_rating`` (DER, BackdoorBench): ``[max(0, ΔASR) − max(0, ΔAcc) + 1] / 2``
  with ΔASR = ASR before − after and ΔAcc = accuracy before − after, as fractions: 1 for a repair
  that removes the whole backdoor at no cost, 0.5 for one that changes nothing.
- stealth, per poisoned image in 0–255 pixel units: L∞, L2, PSNR (dB), SSIM; mean and worst.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from perturbd.data.dataset import ImageDataset, to_pixels
from perturbd.errors import DataError
from perturbd.train import predict


class Applies(Protocol):
    """What the metrics need of a trigger (:class:`perturbd.triggers.Trigger` is one): ``apply``
    maps a batch of images to its triggered copy, uint8 or float in [0, 1] as given."""

    def apply(self, images: torch.Tensor) -> torch.Tensor: ...


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


def attack_success_rate(
    model: nn.Module, test: ImageDataset, trigger: Applies, target: int, sources: Sources = None, precision: str = "auto"
) -> float:
    """Fraction of the test images of the source classes (default: every class but the target)
    sent to ``target`` once triggered, in [0, 1]."""
    return target_rate(model, outside(test, target, sources), trigger.apply, target, precision)


def non_source_rate(
    model: nn.Module, test: ImageDataset, trigger: Applies, target: int, sources: Sequence[int], precision: str = "auto"
) -> float | None:
    """For a source-specific attack: the fraction of the *other* non-target test images sent to
    ``target`` once triggered (None when every non-target class is a source)."""
    others = attacked(test.labels, target) & ~attacked(test.labels, target, sources)
    if not bool(others.any()):
        return None
    return target_rate(model, test.images[others], trigger.apply, target, precision)


def triggered_outcome(
    model: nn.Module, test: ImageDataset, trigger: Applies, target: int, sources: Sources = None, precision: str = "auto"
) -> tuple[float, float]:
    """``(attack_success_rate, robust_accuracy)`` of ``model`` from one pass over the triggered test
    images of the source classes (default: every class but the target), both in [0, 1]: the
    fraction sent to ``target`` and the fraction still classified as their true label."""
    keep = attacked(test.labels, target, sources)
    images, labels = test.images[keep], test.labels[keep]
    if len(images) == 0:
        raise DataError(f"no image outside the target class {target} to perturb: the rate toward {target} is undefined; give more images")
    predicted = predict(model, trigger.apply(images), precision=precision)
    return float((predicted == target).float().mean()), float((predicted == labels).float().mean())


def robust_accuracy(
    model: nn.Module, test: ImageDataset, trigger: Applies, target: int, sources: Sources = None, precision: str = "auto"
) -> float:
    """R-Acc: the fraction of the test images of the source classes (default: every class but the
    target) that ``model`` still classifies as their true label once triggered, in [0, 1]."""
    return triggered_outcome(model, test, trigger, target, sources, precision)[1]


def defense_effectiveness_rating(asr_before: float, asr_after: float, accuracy_before: float, accuracy_after: float) -> float:
    """BackdoorBench's DER, in [0, 1]: ``[max(0, ΔASR) − max(0, ΔAcc) + 1] / 2`` with
    ΔASR = ``asr_before − asr_after`` and ΔAcc = ``accuracy_before − accuracy_after`` (fractions).

    Example:
        >>> defense_effectiveness_rating(1.0, 0.0, 0.9, 0.9)  # the backdoor gone, no accuracy lost
        1.0
        >>> round(defense_effectiveness_rating(0.98, 0.08, 0.95, 0.93), 4)
        0.94
    """
    return (max(0.0, asr_before - asr_after) - max(0.0, accuracy_before - accuracy_after) + 1) / 2


def psnr_each(clean: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """PSNR (dB; peak 255) of each poisoned image against its clean original; ``inf`` where unchanged."""
    return _psnr((to_pixels(poisoned) - to_pixels(clean)).flatten(1))


def _psnr(diff: torch.Tensor) -> torch.Tensor:
    """PSNR (dB; peak 255) of each row of pixel differences ``(N, D)`` in 0–255 units."""
    return 10 * torch.log10(255.0**2 / diff.pow(2).mean(1))


def mean_finite(values: torch.Tensor) -> float:
    """The mean of the finite ``values`` (``inf`` when none is finite): the mean PSNR of a batch."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.inf


SSIM_SIGMA = 1.5  # the Gaussian window's σ in pixels; its size is 2·⌊3.5σ + 0.5⌋ + 1 = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03  # the stabilising constants, as fractions of the data range
# pixels (C·H·W summed over images) per SSIM batch: a float64 convolution on the CPU unfolds every
# 11×11 window, about 4.8 kB per image pixel (5 maps × 121 × 8 B), so the 4,000 poisoned CIFAR-10
# images of a 10 % run took 20 GB at once; in batches of 2^16 pixels, under 0.4 GB (bit-identical)
SSIM_BATCH_PIXELS = 1 << 16


def ssim_each(clean: torch.Tensor, poisoned: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of each poisoned image against its clean original, float ``(N, C, H, W)``
    batches: local means, variances and covariance under an 11×11 Gaussian window (σ 1.5) per
    channel, the population (not sample) covariance, and the mean of the SSIM map over the pixels
    whose window lies inside the image (no padded border) and over the channels.

    This is the SSIM of Wang et al.'s reference code and of scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255)`` (``tests/test_metrics.py`` checks they agree to 1e-12 in float64, the
    precision :func:`stealth` computes in). torchmetrics' default reflects the border and averages
    it in, which on a 28×28 digit counts a 5-pixel frame of mirrored background and reads lower
    (about 0.71 against 0.92 for the c = 10 grid on MNIST digits).
    """
    n, channels, height, width = poisoned.shape
    size = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1
    if min(height, width) < size:
        raise DataError(f"SSIM needs images of at least {size}×{size} pixels (its Gaussian window), got {height}×{width}")
    offsets = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=poisoned.dtype, device=poisoned.device)
    gauss = torch.exp(-torch.pow(offsets / SSIM_SIGMA, 2) / 2)
    gauss = (gauss / gauss.sum()).unsqueeze(0)
    window = torch.matmul(gauss.t(), gauss).expand(channels, 1, size, size)
    step = max(1, SSIM_BATCH_PIXELS // (channels * height * width))
    parts = [_ssim(clean[i : i + step], poisoned[i : i + step], window, data_range) for i in range(0, n, step)]
    return torch.cat(parts) if parts else poisoned.new_zeros(0)


def _ssim(clean: torch.Tensor, poisoned: torch.Tensor, window: torch.Tensor, data_range: float) -> torch.Tensor:
    """:func:`ssim_each` of one batch, under the Gaussian ``window`` ``(C, 1, 11, 11)``."""
    n, channels = poisoned.shape[:2]
    x, y = poisoned, clean.to(poisoned.dtype)
    mean_x, mean_y, xx, yy, xy = torch.split(F.conv2d(torch.cat((x, y, x * x, y * y, x * y)), window, groups=channels), n)
    mean_x2, mean_y2, mean_xy = mean_x.pow(2), mean_y.pow(2), mean_x * mean_y
    var_x, var_y, cov = xx - mean_x2, yy - mean_y2, xy - mean_xy
    c1, c2 = pow(SSIM_K1 * data_range, 2), pow(SSIM_K2 * data_range, 2)
    ssim_map = ((2 * mean_xy + c1) * (2 * cov + c2)) / ((mean_x2 + mean_y2 + c1) * ((var_x + var_y) + c2))
    return ssim_map.reshape(n, -1).mean(-1)


def stealth(clean: torch.Tensor, poisoned: torch.Tensor) -> dict[str, float]:
    """Distortion of each poisoned image against its clean original, in 0–255 pixel units.

    Returns mean and worst over images of L∞, L2 (over all pixels and channels), PSNR (dB; peak
    255) and SSIM (:func:`ssim_each`). "Worst" is the largest norm and the
    smallest PSNR / SSIM. An image left unchanged (by clipping) has infinite PSNR and is left out
    of the mean PSNR. PSNR is computed here: torchmetrics' differs from it by up to 5e-6 dB.
    """
    if clean.shape != poisoned.shape or len(clean) == 0:
        raise DataError(f"stealth needs matching non-empty batches, got {tuple(clean.shape)} and {tuple(poisoned.shape)}")
    a, b = to_pixels(clean), to_pixels(poisoned)
    diff = (b - a).flatten(1)
    linf = diff.abs().amax(1)
    l2 = diff.norm(dim=1)
    psnr = _psnr(diff)
    ssim = ssim_each(a.double(), b.double())
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
