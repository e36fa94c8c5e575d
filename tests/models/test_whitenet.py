"""whitenet32: the whitening stem whitens, is fitted once, and the CPU recipe trains it."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from perturbd.config import DataConfig, TrainConfig, load_config
from perturbd.data import load_data
from perturbd.models import get_model
from perturbd.models.whitenet import CPU_RECIPE, PatchWhitening, WhiteNet
from perturbd.train import fit, predict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_stem_whitens_the_patches_it_was_fitted_on() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 0.3]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 12, 12, generator=gen))  # correlated channels
    stem = PatchWhitening(3)
    assert not stem.whitened
    stem.fit(x)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, stem.weight[:12])  # the 12 directions (the rest are their negatives)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / len(flat)
    # unit variance along each direction, up to the eps added to its eigenvalue; no correlation
    assert torch.allclose(cov, torch.diag(torch.diag(cov)), atol=1e-6)
    assert torch.all(torch.diag(cov) > 0.5) and torch.all(torch.diag(cov) <= 1.0)
    assert torch.equal(stem.weight[12:], -stem.weight[:12]) and bool(stem.whitened)
    assert not stem.weight.requires_grad


def test_a_whitened_model_keeps_its_stem_when_trained_again() -> None:
    model = get_model("whitenet32", (3, 32, 32), 10)
    assert isinstance(model, WhiteNet) and model.feature_dim == 256
    model.init_from_data(torch.rand(20, 3, 32, 32))
    before = model.whiten.weight.clone()
    model.init_from_data(torch.rand(20, 3, 32, 32) * 0.1)  # a fine-tuning set: the stem stays
    assert torch.equal(model.whiten.weight, before)
    state = model.state_dict()
    assert bool(state["whiten.whitened"]), "a checkpoint says its stem is fitted"
    fresh = get_model("whitenet32", (3, 32, 32), 10)
    fresh.load_state_dict(state)
    assert bool(fresh.whiten.whitened) and torch.equal(fresh.whiten.weight, before)


def test_batchnorm_has_no_learned_scale() -> None:
    model = get_model("whitenet32", (3, 32, 32), 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad and m.eps == 1e-12 for m in norms)


def test_the_cpu_recipe_learns_a_colour_slice_and_repeats() -> None:
    split = load_data(DataConfig(name="synthetic-rgb", train_limit=600, test_limit=200), seed=0)

    def train() -> tuple[WhiteNet, list[float]]:
        torch.manual_seed(0)
        model = WhiteNet(split.train.image_shape, split.train.num_classes, widths=(16, 32, 32))
        cfg = TrainConfig(**{**CPU_RECIPE, "epochs": 6, "batch_size": 100, "device": "cpu"})
        return model, fit(model, split.train, cfg, seed=0).losses

    model, losses = train()
    accuracy = float((predict(model, split.test.images) == split.test.labels).float().mean())
    assert losses[-1] < losses[0] and accuracy > 0.8, (losses, accuracy)
    again, losses_again = train()
    assert losses_again == losses and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_recipe_file_is_the_recipe() -> None:
    cfg = load_config(CONFIGS / "cifar10-cpu.yaml")
    assert cfg.model.name == "whitenet32_small"
    assert yaml.safe_load((CONFIGS / "cifar10-cpu.yaml").read_text())["train"] == CPU_RECIPE
