"""fastnet32: trains on CPU on a small colour slice; its recipe is a valid train config."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from perturbd.config import DataConfig, TrainConfig, load_config
from perturbd.data import load_data
from perturbd.models import get_model
from perturbd.models.fastnet import RECIPE, FastNet, ScaledLinear
from perturbd.train import fit, predict

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cifar10-fastnet.yaml"


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


def test_recipe_is_a_valid_train_config_and_matches_the_yaml() -> None:
    TrainConfig(**RECIPE)
    assert yaml.safe_load(CONFIG.read_text())["train"] == RECIPE
    cfg = load_config(CONFIG)
    assert cfg.model.name == "fastnet32" and cfg.train.batch_size == 1024
