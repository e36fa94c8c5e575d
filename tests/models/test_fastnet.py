"""fastnet32 and fastnet32_small: train on CPU on a small colour slice; their recipes are valid train configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from perturbd.config import DataConfig, TrainConfig, load_config
from perturbd.data import load_data
from perturbd.models import get_model
from perturbd.models.fastnet import CPU_RECIPE, RECIPE, FastNet, ScaledLinear
from perturbd.train import fit, predict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_small_fastnet_learns_a_colour_slice() -> None:
    split = load_data(DataConfig(name="synthetic-rgb", train_limit=600, test_limit=200), seed=0)
    torch.manual_seed(0)
    model = FastNet(split.train.image_shape, split.train.num_classes, widths=(16, 32, 32), stem=8)
    cfg = TrainConfig(**{**RECIPE, "epochs": 6, "batch_size": 100, "lr": 0.4, "device": "cpu"})
    result = fit(model, split.train, cfg, seed=0)
    accuracy = float((predict(model, split.test.images) == split.test.labels).float().mean())
    assert result.losses[-1] < result.losses[0]
    assert accuracy > 0.8, accuracy


def test_registered_shape_and_head_scale() -> None:
    torch.manual_seed(0)
    model = get_model("fastnet32", (3, 32, 32), 10)
    assert model.feature_dim == 256 and isinstance(model.fc, ScaledLinear) and model.fc.scale == 1 / 8
    f = model.eval().features(torch.rand(3, 3, 32, 32))
    assert torch.allclose(model.head(f), (f @ model.fc.weight.T) / 8)


def test_identity_init_passes_channels_through() -> None:
    torch.manual_seed(0)
    model = FastNet((3, 32, 32), 10, widths=(16, 32, 32), stem=8)
    convs = [m for m in model.body if isinstance(m, torch.nn.Conv2d)]
    second = convs[1]  # 8 → 16: filters 0..7 are identities of input channels 0..7
    assert second.weight[3, 3, 1, 1] == 1 and second.weight[3].abs().sum() == 1
    assert second.weight[8:].abs().sum() > 0  # the other filters stay random


@pytest.mark.parametrize(
    ("file", "model", "recipe"),
    [("cifar10-fastnet.yaml", "fastnet32", RECIPE), ("cifar10-cpu-fastnet.yaml", "fastnet32_small", CPU_RECIPE)],
)
def test_recipe_is_a_valid_train_config_and_matches_the_yaml(file: str, model: str, recipe: dict) -> None:
    TrainConfig(**recipe)
    assert yaml.safe_load((CONFIGS / file).read_text())["train"] == recipe
    cfg = load_config(CONFIGS / file)
    assert cfg.model.name == model and cfg.train.batch_size == recipe["batch_size"]


def test_the_cpu_model_is_fastnet_at_a_quarter_of_the_work() -> None:
    """fastnet32_small: the same layers as fastnet32 at half the widths (stem 24, 32-128-128)."""
    small, large = (get_model(name, (3, 32, 32), 10, seed=0) for name in ("fastnet32_small", "fastnet32"))
    kinds = [type(m) for m in small.body]
    assert kinds == [type(m) for m in large.body] and small.feature_dim == 128
    convs = [m.out_channels for m in small.body if isinstance(m, torch.nn.Conv2d)]
    assert convs == [24, 32, 32, 128, 128, 128, 128]
    assert CPU_RECIPE["lr"] / CPU_RECIPE["batch_size"] == RECIPE["lr"] / RECIPE["batch_size"]
