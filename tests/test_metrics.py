"""Metrics: ASR excludes the target class; stealth numbers in pixel units."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from perturbd import metrics
from perturbd.data.dataset import ImageDataset
from perturbd.errors import DataError
from perturbd.metrics import attack_success_rate, clean_accuracy, mean_finite, psnr_each, ssim_each, stealth
from perturbd.triggers import Trigger


class Brightness(nn.Module):
    """Predicts class 1 when the mean pixel is above a threshold, else the label encoded in pixel 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x[:, 0, 0, 0] * 255).round().long().clamp(0, 2)
        label = torch.where(x.mean((1, 2, 3)) > 0.5, torch.ones_like(label), label)
        return nn.functional.one_hot(label, 3).float() + 0 * self.w


def _data() -> ImageDataset:
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    return ImageDataset(images, labels, ("a", "b", "c"), "toy")


def test_clean_accuracy_and_asr_exclude_target() -> None:
    data = _data()
    model = Brightness()
    assert clean_accuracy(model, data) == 1.0
    trigger = Trigger(torch.full((1, 4, 4), 200.0), "test")
    # every triggered image is sent to 1; the two images of class 1 are excluded: 4/4, not 6/6
    assert attack_success_rate(model, data, trigger, target=1) == 1.0
    weak = Trigger(torch.full((1, 4, 4), 10.0), "test")
    assert attack_success_rate(model, data, weak, target=1) == 0.0


def test_asr_counts_only_non_target_images() -> None:
    data = _data()
    trigger = Trigger(torch.zeros(1, 4, 4), "none")
    # with no trigger the model predicts the true label: class-1 images would count as successes if included
    assert attack_success_rate(Brightness(), data, trigger, target=1) == 0.0


def test_robust_accuracy_counts_triggered_images_kept_at_their_true_label() -> None:
    data = _data()
    model = Brightness()
    strong, none = Trigger(torch.full((1, 4, 4), 200.0), "test"), Trigger(torch.zeros(1, 4, 4), "none")
    assert metrics.robust_accuracy(model, data, strong, target=1) == 0.0, "every triggered image is sent to 1"
    assert metrics.robust_accuracy(model, data, none, target=1) == 1.0, "untriggered: all kept (class 1 excluded)"
    assert metrics.triggered_outcome(model, data, strong, target=1) == (1.0, 0.0)
    # sources respected: only the images of class 2 count
    half = Trigger(torch.full((1, 4, 4), 200.0), "test")
    assert metrics.triggered_outcome(model, data, half, target=1, sources=[2]) == (1.0, 0.0)
    assert metrics.triggered_outcome(model, data, none, target=1, sources=[2]) == (0.0, 1.0)
    with pytest.raises(DataError, match="no image outside the target class"):
        metrics.robust_accuracy(model, data.subset(torch.tensor([2, 3])), strong, target=1)


@pytest.mark.parametrize(
    "asr_before,asr_after,acc_before,acc_after,der",
    [
        (1.0, 0.0, 0.9, 0.9, 1.0),  # removed at no cost
        (0.9, 0.9, 0.9, 0.9, 0.5),  # nothing changed
        (0.98, 0.08, 0.95, 0.93, 0.94),  # (0.90 − 0.02 + 1) / 2
        (0.5, 0.7, 0.9, 0.95, 0.5),  # a rise in ASR or accuracy counts as no change (the max(0, ·))
        (1.0, 1.0, 1.0, 0.0, 0.0),  # all accuracy lost, backdoor kept
    ],
)
def test_der_is_backdoorbench_s(asr_before: float, asr_after: float, acc_before: float, acc_after: float, der: float) -> None:
    assert math.isclose(metrics.defense_effectiveness_rating(asr_before, asr_after, acc_before, acc_after), der, abs_tol=1e-12)


def test_stealth_in_pixel_units() -> None:
    clean = torch.full((2, 1, 16, 16), 100, dtype=torch.uint8)
    poisoned = clean.clone()
    poisoned[0, 0, 0, 0] += 10
    poisoned[1] += 2
    s = stealth(clean, poisoned)
    assert s["linf_max"] == 10 and s["linf_mean"] == 6
    assert math.isclose(s["l2_max"], 32.0) and math.isclose(s["l2_mean"], 21.0)
    psnr1 = 10 * math.log10(255**2 / (100 / 256))
    psnr2 = 10 * math.log10(255**2 / 4)
    assert math.isclose(s["psnr_min"], min(psnr1, psnr2), rel_tol=1e-9)
    assert math.isclose(s["psnr_mean"], (psnr1 + psnr2) / 2, rel_tol=1e-9)
    assert 0 < s["ssim_min"] <= s["ssim_mean"] <= 1


def test_ssim_is_wang_et_al_as_scikit_image_computes_it() -> None:
    """Our SSIM is Wang et al.'s: scikit-image's ``structural_similarity`` with the Gaussian window
    (σ 1.5), the population covariance and no padded border, to 1e-12 in float64 — grey and
    colour, faint and strong perturbations, the smallest image the window fits and 32×32. It is
    not torchmetrics' default, which averages a reflected border in."""
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    for shape, amplitude in [((5, 1, 28, 28), 10), ((4, 3, 32, 32), 3), ((3, 3, 32, 32), 80), ((2, 1, 11, 13), 20)]:
        clean = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        poisoned = (clean.int() + torch.randint(-amplitude, amplitude + 1, shape, generator=g)).clamp(0, 255).to(torch.uint8)
        ours = ssim_each(clean.double(), poisoned.double())
        for i in range(len(clean)):
            theirs = structural_similarity(  # type: ignore[no-untyped-call]
                clean[i].double().numpy(),
                poisoned[i].double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=255,
                channel_axis=0,
            )
            assert abs(float(ours[i]) - float(theirs)) < 1e-12, (shape, i)
    a = clean.double()
    assert torch.equal(ssim_each(a, a), torch.ones(len(a), dtype=torch.float64)), "an unchanged image has SSIM 1"
    with pytest.raises(DataError, match="SSIM needs images of at least 11×11"):
        ssim_each(torch.zeros(1, 1, 10, 28), torch.zeros(1, 1, 10, 28))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_ssim_in_batches_is_bit_identical_to_one_image_at_a_time(shape: tuple[int, int, int]) -> None:
    """ssim_each works through SSIM_BATCH_PIXELS at a time (memory): the batches do not change a bit."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 256, (100, *shape), generator=g).double()
    poisoned = (clean + torch.randint(-6, 7, clean.shape, generator=g)).clamp(0, 255)
    one_by_one = torch.cat([ssim_each(clean[i : i + 1], poisoned[i : i + 1]) for i in range(len(clean))])
    assert torch.equal(ssim_each(clean, poisoned), one_by_one)
    assert 100 * math.prod(shape) > metrics.SSIM_BATCH_PIXELS  # more than one batch
    assert len(ssim_each(clean[:0], poisoned[:0])) == 0


def test_ssim_of_the_paper_grid_on_a_digit_is_wang_s_not_the_reflected_border_s() -> None:
    """On real digits (the embedded mnist5k) the c = 10 grid scores about 0.92 with Wang's SSIM;
    torchmetrics' reflected-border variant, which perturbd reported before, reads about 0.71."""
    from perturbd.config import DataConfig
    from perturbd.data.sources import load_data
    from perturbd.triggers.static import grid_pattern

    digits = load_data(DataConfig(name="mnist5k")).test.images[:200]
    poisoned = Trigger(grid_pattern(28, 28, 10.0), "grid").apply(digits)
    ours = float(stealth(digits, poisoned)["ssim_mean"])
    reflected_map = structural_similarity_index_measure(poisoned.float(), digits.float(), data_range=255.0)
    assert isinstance(reflected_map, torch.Tensor)
    reflected = float(reflected_map)
    assert 0.88 < ours < 0.96 and 0.65 < reflected < 0.78, (ours, reflected)


def test_a_source_specific_attack_is_measured_on_its_sources_and_apart_on_the_others() -> None:
    from perturbd.metrics import attacked, non_source_rate, outside

    labels = torch.arange(40) % 4  # classes 0–3, target 0, sources [1]
    data = ImageDataset(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), labels, ("a", "b", "c", "d"))
    assert torch.equal(attacked(labels, 0, [1]), labels == 1)
    assert len(outside(data, 0, [1])) == 10 and len(outside(data, 0)) == 30

    class SendsBrightToZero(torch.nn.Module):  # class 0 for images brighter than 0.5, else class 3
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bright = (x.flatten(1).mean(1) > 0.5).float()
            return torch.stack([bright, 0 * bright, 0 * bright, 1 - bright], 1)

    model = SendsBrightToZero()
    _ = model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    lift = Trigger(torch.full((1, 2, 2), 200.0), "lift")
    assert attack_success_rate(model, data, lift, 0, [1]) == 1.0
    assert non_source_rate(model, data, lift, 0, [1]) == 1.0, "classes 2 and 3 are sent too: measured apart"
    assert non_source_rate(model, data, lift, 0, [1, 2, 3]) is None


def test_psnr_is_ours_not_torchmetrics_whose_last_digits_differ() -> None:
    """PSNR stays computed here: torchmetrics' PSNR (log through ln / ln 10) differs by up to
    ~5e-6 dB, which would change every stored psnr_mean (metrics.json keeps full floats)."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=gen)
    poisoned = (clean.int() + torch.randint(-9, 10, clean.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    theirs = peak_signal_noise_ratio(poisoned.double(), clean.double(), data_range=255.0, reduction="none", dim=(1, 2, 3))
    mse = (poisoned.double() - clean.double()).flatten(1).pow(2).mean(1)
    ours = 10 * torch.log10(255.0**2 / mse)
    assert stealth(clean, poisoned)["psnr_min"] == float(ours.min())
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)


def test_the_psnr_search_measures_what_stealth_reports() -> None:
    """``trigger.psnr`` searches on :func:`psnr_each` alone (no SSIM per try); the mean it lands on
    is bit-for-bit stealth's ``psnr_mean``, unchanged images (infinite PSNR) left out of both."""
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=gen)
    poisoned = (clean.int() + torch.randint(-5, 6, clean.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    poisoned[:4] = clean[:4]
    each = psnr_each(clean, poisoned)
    assert torch.isinf(each[:4]).all() and torch.isfinite(each[4:]).all()
    assert mean_finite(each) == stealth(clean, poisoned)["psnr_mean"]
    assert mean_finite(torch.full((3,), math.inf)) == math.inf
