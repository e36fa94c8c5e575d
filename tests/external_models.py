"""Models perturbd did not make, built on the fly: one torchvision ResNet-18's weights as a
perturbd checkpoint, as plain state dicts (``.pt``; a ``{"state_dict": ...}`` ``.pth``; a
DataParallel ``.safetensors``) and as a TorchScript file of the bare torchvision network; and tiny
colour data in an ``.npz`` for them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

from perturbd.models import get_model, save_model

SHAPE = (3, 16, 16)
CLASSES = 3
# perturbd's tv: models normalise with mean = std = 0.5; files without that record state it
HALF = ["model.mean=[0.5]", "model.std=[0.5]"]


def tiny_npz(path: Path, n_train: int = 48, n_test: int = 24, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> Path:
    """Random uint8 images ``(N, C, H, W)`` with labels cycling over :data:`CLASSES` classes."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=np.arange(n_train) % CLASSES,
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=np.arange(n_test) % CLASSES,
    )
    return path


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A perturbd ``tv:`` model's weights in torchvision's own layout (``conv1.weight`` … ``fc.bias``)."""
    return {k.removeprefix("body."): v.clone() for k, v in model.state_dict().items()}


def script(net: torch.nn.Module, path: Path) -> Path:
    """``torch.jit.save(torch.jit.script(net))`` without torch's deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


def resnet_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The same ResNet-18 weights (``get_model("tv:resnet18", seed=seed)``) in every format."""
    folder.mkdir(parents=True, exist_ok=True)
    model = get_model("tv:resnet18", SHAPE, CLASSES, seed=seed).eval()
    plain = plain_state(model)
    torch.save(plain, folder / "plain.pt")
    torch.save({"state_dict": plain}, folder / "wrapped.pth")
    save_file({f"module.{k}": v.contiguous() for k, v in plain.items()}, str(folder / "parallel.safetensors"))
    net = torchvision.models.resnet18(num_classes=CLASSES)
    net.load_state_dict(plain)
    return {
        "own": save_model(model, folder / "own.safetensors"),
        "plain": folder / "plain.pt",
        "wrapped": folder / "wrapped.pth",
        "parallel": folder / "parallel.safetensors",
        "scripted": script(net, folder / "scripted.pt"),
    }
