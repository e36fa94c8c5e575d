"""Equal visibility: a trigger's strength searched so that its poisoned images have a given PSNR (or SSIM)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from perturbd.attack.visibility import at_psnr, mean_psnr, mean_ssim
from perturbd.config import TrainConfig, TriggerConfig, load_config
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.models import get_model
from perturbd.train import fit
from perturbd.triggers import TriggerContext, build_trigger
from perturbd.triggers.static import grid_pattern

IMAGES = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _build(quantize: bool):
    def build(cfg: TriggerConfig):
        built.append(cfg)
        return replace(build_trigger(cfg, TriggerContext((1, 28, 28), 0)), quantize=quantize)

    built: list[TriggerConfig] = []
    return build, built


@pytest.mark.parametrize("kind", ["grid", "chessboard", "ring", "random"])
def test_an_unrounded_mask_lands_on_the_asked_psnr(kind: str) -> None:
    build, built = _build(quantize=False)
    trig = at_psnr(TriggerConfig(kind=kind, psnr=37.0), build, IMAGES)
    assert abs(mean_psnr(trig, IMAGES) - 37.0) <= 0.05 and len(built) <= 6
    assert trig.info["psnr_goal"] == 37.0 and abs(trig.info["psnr_on_adversary_images"] - 37.0) <= 0.05
    assert all(c.psnr is None for c in built), "each try builds a mask of one strength"


def test_a_rounded_mask_keeps_the_closest_strength_and_says_how_close() -> None:
    build, _ = _build(quantize=True)
    trig = at_psnr(TriggerConfig(kind="chessboard", psnr=34.5), build, IMAGES)
    reached = mean_psnr(trig, IMAGES)
    assert trig.info["psnr_on_adversary_images"] == pytest.approx(reached)
    for c in (5.0, 6.0, 7.0, 8.0):  # no whole grey level comes closer
        other = build(TriggerConfig(kind="chessboard", amplitude=c))
        assert abs(reached - 34.5) <= abs(mean_psnr(other, IMAGES) - 34.5) + 1e-9


def test_without_psnr_the_mask_is_built_as_configured_and_numpy_masks_cannot_be_scaled(tmp_path) -> None:
    build, built = _build(quantize=True)
    at_psnr(TriggerConfig(kind="grid", amplitude=7), build, IMAGES)
    assert [c.amplitude for c in built] == [7]
    with pytest.raises(ConfigError, match="only PNG masks"):
        at_psnr(TriggerConfig(kind="image", path=tmp_path / "m.npy", psnr=30), build, IMAGES)
    assert TriggerConfig(kind="grid", psnr=34.5).label == "grid at PSNR 34.5 dB"


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    """300 MNIST training images (mnist5k, embedded), none of class 0 (the target)."""
    split = load_data(load_config(overrides=["data.name=mnist5k"]).data, seed=0)
    return split.train.images[split.train.labels != 0][:300]


@pytest.fixture(scope="module")
def mnist_model() -> tuple[torch.nn.Module, ImageDataset]:
    """cnn28 trained one epoch on 1,000 mnist5k images (a second), and those images."""
    train = load_data(load_config(overrides=["data.name=mnist5k", "data.train_limit=1000"]).data, seed=0).train
    torch.manual_seed(0)
    model = get_model("cnn28", (1, 28, 28), 10)
    fit(model, train, TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1), seed=0)
    return model.eval(), train


# the kinds computed from a model, small: the adaptive mask's max_steps left at 10 (a DeepFool step
# counts only if it converged in fewer than 9); Narcissus with a step large enough to fill its budget
FROM_MODEL = {
    "adaptive": {"samples": 32, "passes": 1},
    "lf": {"samples": 16, "passes": 1, "max_steps": 20},
    "narcissus": {"samples": 32, "warmup_epochs": 0, "epochs": 15, "batch_size": 16, "lr": 0.1},
}


def _any_kind(kind: str, mnist_model):
    """``build`` for ``at_psnr``: a kind computed from a model is built on a quickly trained model."""
    if kind not in FROM_MODEL:
        return lambda cfg: build_trigger(cfg, TriggerContext((1, 28, 28), 0))
    ctx = TriggerContext((1, 28, 28), 0, 0, *mnist_model)
    return lambda cfg: build_trigger(cfg.model_copy(update=FROM_MODEL[kind]), ctx)


@pytest.mark.parametrize("goal", [34.5, 38.9])
@pytest.mark.parametrize(
    "kind", ["grid", "chessboard", "adaptive", "blended", "sig", "sig_ramp", "wanet", "lf", "narcissus", "ftrojan", "bpp", "adap_blend"]
)
def test_psnr_lands_within_two_tenths_of_a_db_for_every_kind(kind: str, goal: float, mnist: torch.Tensor, mnist_model) -> None:
    trig = at_psnr(TriggerConfig(kind=kind, psnr=goal), _any_kind(kind, mnist_model), mnist)
    assert abs(mean_psnr(trig, mnist) - goal) <= 0.2, trig.info  # of the copies a poisoned set holds (adap_blend: half its patches)
    assert trig.info["psnr_goal"] == goal and trig.info["psnr_on_adversary_images"] == pytest.approx(mean_psnr(trig, mnist))
    assert TriggerConfig(kind=kind).strength_key in trig.info


@pytest.mark.parametrize("kind", ["grid", "blended", "wanet"])
def test_ssim_is_searched_the_same_way(kind: str, mnist: torch.Tensor, mnist_model) -> None:
    trig = at_psnr(TriggerConfig(kind=kind, ssim=0.97), _any_kind(kind, mnist_model), mnist)
    assert abs(mean_ssim(trig, mnist) - 0.97) <= 0.005, trig.info
    assert trig.info["ssim_goal"] == 0.97 and "psnr_goal" not in trig.info


def test_an_integral_amplitude_is_the_plain_mask_and_a_fraction_is_dithered() -> None:
    ten = build_trigger(TriggerConfig(kind="grid", amplitude=10), TriggerContext((1, 28, 28), 0)).delta
    assert torch.equal(ten, grid_pattern(28, 28, 10.0)), "integral amplitudes: bit for bit as before"
    half = build_trigger(TriggerConfig(kind="grid", amplitude=10.5), TriggerContext((1, 28, 28), 0)).delta
    on = grid_pattern(28, 28, 1.0) > 0
    assert set(half[on].unique().tolist()) == {10.0, 11.0} and bool((half[~on] == 0).all())
    assert torch.equal(half, build_trigger(TriggerConfig(kind="grid", amplitude=10.5), TriggerContext((1, 28, 28), 0)).delta)
    assert abs(float(half[on].mean()) - 10.5) < 0.15
    soft = build_trigger(TriggerConfig(kind="grid", amplitude=10.5), TriggerContext((1, 28, 28), 0, quantize=False)).delta
    assert torch.equal(soft, grid_pattern(28, 28, 10.5)), "unquantized: the exact amplitude"


def test_thinning_keeps_an_adaptive_masks_budget(mnist: torch.Tensor, mnist_model) -> None:
    build = _any_kind("adaptive", mnist_model)
    trig = at_psnr(TriggerConfig(kind="adaptive", psnr=35.0), build, mnist, seed=1)
    assert trig.norms()["linf"] <= trig.info["budget"] + 1e-9 and abs(mean_psnr(trig, mnist) - 35.0) <= 0.2
    assert torch.equal(trig.delta, at_psnr(TriggerConfig(kind="adaptive", psnr=35.0), build, mnist, seed=1).delta), "seeded"
