"""TeCo as Liu et al. define it: per corruption the first severity that flips the label (6 when
none does), and the spread (ddof 0) of those severities over the corruptions as the score."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perturbd
from perturbd.config import DefenseSpec
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.corruptions import CORRUPTIONS
from perturbd.defenses.teco import TeCo
from perturbd.errors import ConfigError
from perturbd.evaluation import run_defenses
from perturbd.evaluation.harness import evaluate_defense

TWO = ["brightness", "contrast"]


class Tenths(nn.Module):
    """Labels an image by its mean brightness in tenths (0–9)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x.mean((1, 2, 3)) * 10).floor().long().clamp(0, 9)
        return nn.functional.one_hot(label, 10).float()


def _uniform(level: int, n: int = 4) -> ImageDataset:
    images = torch.full((n, 1, 6, 6), level, dtype=torch.uint8)
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), tuple(str(i) for i in range(10)), "uniform")


def test_defaults_are_the_papers() -> None:
    d = TeCo()
    assert d.corruptions == "all" and d.names_ == [
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
        "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    ] == list(CORRUPTIONS)  # fmt: skip
    assert d.frr == 0.01


def test_flip_severity_and_its_spread() -> None:
    """13/255 ≈ 0.05 is in the first tenth: brightness (+0.1 per severity) moves it at severity 1;
    contrast leaves a uniform image as it is: never (6). Spread of [1, 6], ddof 0: 2.5."""
    d = TeCo(corruptions=TWO, seed=0).fit(Tenths(), _uniform(13))
    flips = d.flip_severity(_uniform(13).images)
    assert flips.tolist() == [[1, 6]] * 4
    assert torch.allclose(d.score(_uniform(13).images), torch.full((4,), 2.5))
    assert d.threshold_ == 2.5 and not d.flagged_.any() and d.facts_["corruptions"] == 2
    assert d.flip_severity(_uniform(250).images)[0].tolist() == [6, 6], "0.98 brightened stays in the last tenth"
    assert d.score(_uniform(250).images)[0] == 0


def test_teco_separates_triggered_inputs(planted_grid) -> None:
    r = evaluate_defense(build_defense("teco", n_clean=60, batch_size=512), planted_grid.inputs(), eval_limit=60)
    m = r.metrics
    # measured (100 clean, 100 test images): AUROC 1.000, TPR 0.86 / FPR 0.00 at its threshold, TPR 1.00 at 5 % FPR;
    # the clean twin's AUROC 0.54. On the white patch of ``planted`` (a trigger every corruption leaves intact) TeCo
    # measured AUROC 0.29: the patch keeps the target at every severity (spread 0), see the module docstring
    assert m["auroc"] > 0.9 and m["tpr_at_5_fpr"] > 0.8 and m["fpr"] < 0.05, r.cell["text"]
    assert m["clean_model"]["auroc"] < 0.75, "a clean model gives TeCo nothing to find"
    assert r.clean_used == 60 and m["calibration_images"] == 60 and m["corruptions"] == 15
    assert m["calibration_fpr"] <= 0.01


def test_same_seed_same_numbers_and_flags_from_scores(planted_grid) -> None:
    images = planted_grid.test.images[:8]
    a = TeCo(corruptions=["gaussian_noise", "glass_blur", "snow"], n_clean=8, seed=3).fit(planted_grid.model, planted_grid.clean)
    b = TeCo(corruptions=["gaussian_noise", "glass_blur", "snow"], n_clean=8, seed=3).fit(planted_grid.model, planted_grid.clean)
    assert torch.equal(a.scores_, b.scores_) and a.threshold_ == b.threshold_
    assert torch.equal(a.flip_severity(images), b.flip_severity(images))
    assert torch.equal(a.flag(images), a.flag_scores(a.score(images)))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"corruptions": ["gaussian_noise", "snwo"]}, r"teco.corruptions: unknown corruption 'snwo'; did you mean 'snow'\?"),
        ({"corruptions": "snow"}, r"teco.corruptions must be 'all' or a list of corruption names, got 'snow'"),
        ({"corruptions": ["snow"]}, r"teco.corruptions must be"),
        (
            {"corruptions": ["snow", "fog", "snow"]},
            r"teco.corruptions names a corruption twice, got \['snow', 'fog', 'snow'\]; name each once",
        ),
        ({"frr": 0}, r"teco.frr must be in \(0, 1\), got 0"),
        ({"n_clean": 1}, r"teco.n_clean must be in \[2, 1000000\], got 1"),
    ],
)
def test_bad_parameters_are_one_line(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        build_defense("teco", **params)
    assert "\n" not in str(err.value)


def test_too_few_clean_images_is_one_line() -> None:
    with pytest.raises(ConfigError, match="teco needs at least 2 clean images, got 1"):
        TeCo().fit(Tenths(), _uniform(13, n=1))


def test_a_users_model_through_defend() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    x = torch.rand(8, 28, 28)  # (N, H, W) float in [0, 1], as a user holds MNIST
    d = perturbd.defend(net, x, "teco", corruptions=TWO, seed=0)
    assert isinstance(d, TeCo) and d.clean_used_ == 8 and d.flag(x[:3, None]).shape == (3,)


def test_a_runs_defenses_list_measures_them_as_strip(planted_grid) -> None:
    specs = [
        DefenseSpec(name="strip", params={"n_overlay": 20, "n_calibration": 20, "overlays": 4}),
        DefenseSpec(name="scale_up", params={"n_clean": 40}),
        DefenseSpec(name="teco", params={"corruptions": ["gaussian_noise", "defocus_blur", "brightness"], "n_clean": 20}),
    ]
    reports = run_defenses(specs, planted_grid.inputs(), eval_limit=30)
    keys = {"auroc", "tpr", "fpr", "tpr_at_5_fpr", "threshold", "frr_target", "test_images", "clean_model", "calibration_fpr"}
    for r in reports:
        assert r.kind == "input" and keys <= set(r.metrics), r.name
        assert r.cell["text"].startswith(f"AUROC {r.metrics['auroc']:.3f} (TPR "), "the same cell as STRIP's"
    with pytest.raises(ConfigError, match="teco.frr must be in"):  # before scale_up's work
        run_defenses([specs[1], DefenseSpec(name="teco", params={"frr": 2})], planted_grid.inputs())
