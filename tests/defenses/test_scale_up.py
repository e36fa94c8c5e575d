"""SCALE-UP as Guo et al. define it: the share of amplified copies clip(n·x) that keep the label,
flagged above T = 0.5 without data; standardised per predicted class with a few clean images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perturbd
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.scale_up import ScaleUp, exceedance_threshold
from perturbd.errors import ConfigError
from perturbd.evaluation.harness import evaluate_defense
from perturbd.models import wrap


class Brightness(nn.Module):
    """Labels a uniform image by its brightness: dark 0, mid 1, white 2 (white stays white when
    amplified: a benign class with SPC 1); a 'trigger' (pixel (0, 0) white, (0, 1) black) forces
    label 1 at every amplification."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        label = (m >= 0.35).long() + (m >= 0.95).long()
        triggered = (x[:, 0, 0, 0] > 0.99) & (x[:, 0, 0, 1] < 0.01)
        label = torch.where(triggered, torch.ones_like(label), label)
        return nn.functional.one_hot(label, 3).float()


def _uniform(levels: range) -> torch.Tensor:
    return torch.tensor(list(levels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()


def _brightness_data() -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """Clean images of the three classes, clean white test images, triggered dark images."""
    clean = torch.cat([_uniform(range(10, 70, 2)), _uniform(range(110, 220, 4)), _uniform(range(245, 256)).repeat(3, 1, 1, 1)])
    clean = clean[torch.randperm(len(clean), generator=torch.Generator().manual_seed(0))]  # the reference: any 10 of a class
    white = _uniform(range(246, 256, 3))
    triggered = _uniform(range(12, 60, 6))
    triggered[:, 0, 0, 0], triggered[:, 0, 0, 1] = 255, 0
    return ImageDataset(clean, torch.zeros(len(clean), dtype=torch.long), ("dark", "mid", "white"), "brightness"), white, triggered


def test_defaults_are_the_papers() -> None:
    d = ScaleUp()
    assert (d.mode, d.scales, d.threshold) == ("data_free", list(range(1, 12)), 0.5)


def test_spc_is_the_share_of_amplified_copies_that_keep_the_label() -> None:
    d = ScaleUp(scales=[1, 2, 3, 4]).fit(Brightness(), _brightness_data()[0])
    x = _uniform(range(30, 31)).expand(1, 1, 4, 4).clone()  # 30/255: dark; ×2 dark, ×3 mid (0.35), ×4 mid
    spc, label = d.consistency(x)
    assert label.tolist() == [0] and spc.tolist() == [0.5], "n = 1, 2 keep the label, n = 3, 4 do not"


def test_data_free_flags_above_t_and_reads_no_clean_image() -> None:
    clean, white, triggered = _brightness_data()
    d = ScaleUp().fit(Brightness(), clean)
    assert d.threshold_ == 0.5 and d.clean_used_ == 0
    assert d.flag(triggered).all(), "the trigger survives every amplification"
    assert d.flag(white).all(), "so does a white image: the false positive the data-limited mode corrects"
    assert d.facts_["calibration_fpr"] == pytest.approx(float((d.scores_ > 0.5).float().mean()))


def test_data_limited_standardises_per_predicted_class() -> None:
    clean, white, triggered = _brightness_data()
    d = ScaleUp(mode="data_limited", per_class=10, frr=0.05).fit(Brightness(), clean)
    assert d.class_mean_[2] == 1.0 and d.class_std_[2] == pytest.approx(1 / 11), "σ floored at SPC's resolution"
    assert d.class_mean_[1] < 0.3
    assert d.flag(triggered).all() and not d.flag(white).any(), "white is consistent for its class, the trigger is not"
    assert d.facts_["reference_images"] == 30 and d.facts_["calibration_images"] == len(clean) - 30
    assert d.clean_used_ == len(clean) and d.facts_["calibration_fpr"] <= 0.05
    spc, label = d.consistency(triggered)
    assert torch.allclose(d.score(triggered), (spc - d.class_mean_[label]) / d.class_std_[label])


def test_exceedance_threshold_flags_at_most_frr_of_the_clean_scores() -> None:
    scores = torch.arange(100.0)
    t = exceedance_threshold(scores, 0.05)
    assert t == 95.0 and int((scores > t).sum()) == 4
    assert exceedance_threshold(torch.ones(10), 0.05) == 1.0, "ties: nothing above"


def test_scale_up_separates_triggered_inputs(planted) -> None:
    r = evaluate_defense(build_defense("scale_up", n_clean=300), planted.inputs(), eval_limit=200)
    m = r.metrics
    # measured: AUROC 0.973, TPR 0.95 at T, FPR 0.00; the clean twin's AUROC 0.50
    assert m["auroc"] > 0.9 and m["tpr"] > 0.8 and m["fpr"] < 0.05, r.cell["text"]
    assert m["clean_model"]["auroc"] < 0.75, "a clean model gives SCALE-UP nothing to find"
    assert m["mode"] == "data_free" and m["threshold"] == 0.5 and r.clean_used == 0


def test_data_limited_on_the_planted_backdoor_cancels_the_target_class(planted) -> None:
    """On the tiny bars every clean image of the target keeps its label when amplified, as a
    triggered input does (amplified images fall into the target): per-class standardisation
    sets both to about 0 (AUROC 0.50 measured): a limit of the correction, shown, not hidden."""
    d = build_defense("scale_up", mode="data_limited", n_clean=300).fit(planted.model, planted.clean)
    assert d.class_mean_[planted.target] == 1.0 and d.class_mean_.max() == 1.0
    others = [c for c in range(10) if c != planted.target]
    assert d.class_mean_[others].max() < 0.5


def test_batched_equals_one_input_per_forward(planted) -> None:
    images = planted.clean.images[:20]
    one = ScaleUp(batch_size=12, n_clean=20).fit(planted.model, planted.clean)
    many = ScaleUp(batch_size=1024, n_clean=20).fit(planted.model, planted.clean)
    assert torch.equal(one.score(images), many.score(images))


def test_same_clean_images_same_numbers(planted) -> None:
    a = ScaleUp(mode="data_limited", n_clean=100).fit(planted.model, planted.clean)
    b = ScaleUp(mode="data_limited", n_clean=100).fit(planted.model, planted.clean)
    assert torch.equal(a.scores_, b.scores_) and a.threshold_ == b.threshold_
    images = planted.test.images[:30]
    assert torch.equal(a.flag(images), a.flag_scores(a.score(images)))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"mode": "data_free_"}, r"scale_up.mode must be one of 'data_free', 'data_limited', got 'data_free_'"),
        ({"scales": []}, r"scale_up.scales must be 1 to 64 whole amplification factors in \[1, 255\], got \[\]; e.g. \[3, 5"),
        ({"scales": [0, 2]}, r"scale_up.scales must be 1 to 64 .*, got \[0, 2\]"),
        ({"scales": [2.5]}, r"scale_up.scales must be 1 to 64 .*, got \[2.5\]"),
        ({"threshold": 1.0}, r"scale_up.threshold must be in \(0, 1\), got 1.0"),
        ({"per_class": 0}, r"scale_up.per_class must be in \[1, 100000\], got 0"),
    ],
)
def test_bad_parameters_are_one_line(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_defense("scale_up", **params)
    assert "\n" not in str(err.value)


def test_too_few_clean_images_is_one_line(planted) -> None:
    with pytest.raises(ConfigError, match="scale_up needs at least 2 clean images, got 1"):
        ScaleUp().fit(planted.model, planted.clean.subset(torch.arange(1)))


def test_a_users_model_through_defend() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    x = torch.randint(0, 256, (12, 16, 16, 3), dtype=torch.uint8)  # (N, H, W, C), as a user holds them
    d = perturbd.defend(net, x, "scale_up", mode="data_limited", per_class=2)
    assert isinstance(d, ScaleUp) and d.clean_used_ == 12
    chw = x.permute(0, 3, 1, 2).contiguous()
    direct = ScaleUp(mode="data_limited", per_class=2).fit(
        wrap(net, (3, 16, 16)), ImageDataset(chw, torch.zeros(12, dtype=torch.long), tuple("abcde"), "u")
    )
    assert torch.equal(d.score(chw), direct.score(chw)) and d.threshold_ == direct.threshold_
