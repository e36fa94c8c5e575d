"""``perturbd.poison``: the arrays of another framework poisoned exactly as a perturbd run poisons, in their own layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perturbd
from perturbd.config import PoisonConfig, TriggerConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.poisoning import poison_dataset
from perturbd.triggers import TriggerContext, build_trigger

N = 200


@pytest.fixture
def grey() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 12, 10), dtype=np.uint8), (np.arange(N) % 5).astype(np.int32)


def _layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """An ``(N, C, H, W)`` array in every layout."""
    out = {"NCHW": x, "NHWC": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
    if x.shape[1] == 1:
        out["NHW"] = x[:, 0]
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_every_layout_and_array_type_gives_the_same_poison(grey, channels) -> None:
    x, y = grey
    nchw = np.repeat(x[:, None], channels, axis=1)
    ref = perturbd.poison(nchw, y, "chessboard", amplitude=6, rate=0.1, target=2, seed=3)
    for layout, arr in _layouts(nchw).items():
        for as_torch in (False, True):
            got = perturbd.poison(
                torch.from_numpy(arr) if as_torch else arr,
                torch.from_numpy(y) if as_torch else y,
                "chessboard",
                amplitude=6,
                rate=0.1,
                target=2,
                seed=3,
            )
            assert (
                isinstance(got.x, torch.Tensor if as_torch else np.ndarray)
                and isinstance(got.y, type(got.x))
                and isinstance(got.indices, type(got.x))
            )
            assert tuple(got.x.shape) == arr.shape and got.x.dtype in (np.uint8, torch.uint8), layout
            assert np.array_equal(np.asarray(got.x), _layouts(ref.x)[layout]), layout
            assert np.array_equal(np.asarray(got.indices), ref.indices) and np.array_equal(np.asarray(got.y), ref.y)
    assert ref.y.dtype == np.int32, "labels keep their dtype"


def test_matches_poison_dataset(grey) -> None:
    x, y = grey
    data = ImageDataset(torch.from_numpy(x[:, None].copy()), torch.from_numpy(y).long(), tuple("abcde"))
    trigger = build_trigger(TriggerConfig(kind="grid", amplitude=10), TriggerContext(data.image_shape, 7, 1))
    ref = poison_dataset(data, trigger, PoisonConfig(rate=0.05, target=1), 7)
    for given in ("grid", trigger, trigger.delta.numpy(), trigger.delta.numpy()[0]):
        params = {"amplitude": 10} if isinstance(given, str) else {}
        got = perturbd.poison(x, y, given, rate=0.05, target=1, seed=7, **params)
        assert np.array_equal(got.x, ref.dataset.images[:, 0].numpy()) and np.array_equal(got.indices, ref.indices.numpy())
        assert np.array_equal(got.y, ref.dataset.labels.numpy())


def test_seed_target_and_sources(grey) -> None:
    x, y = grey
    a = perturbd.poison(x, y, "grid", rate=0.2, target=0, seed=1)
    assert np.array_equal(a.indices, perturbd.poison(x, y, "grid", rate=0.2, target=0, seed=1).indices)
    assert not np.array_equal(a.indices, perturbd.poison(x, y, "grid", rate=0.2, target=0, seed=2).indices)
    assert len(a.indices) == 40 and (y[a.indices] != 0).all() and (a.y[a.indices] == 0).all()
    assert np.array_equal(x, grey[0]), "the input is untouched"
    s = perturbd.poison(x, y, "grid", rate=0.05, target=0, sources=[3])
    assert set(y[s.indices].tolist()) == {3}


def test_unquantized_poison_is_float_in_pixel_units(grey) -> None:
    x, y = grey
    got = perturbd.poison(x, y, np.full((12, 10), 0.4, dtype=np.float32), rate=0.1, quantize=False)
    assert got.x.dtype == np.float32
    changed = got.x[got.indices] - x[got.indices]
    assert np.allclose(changed[x[got.indices] < 255], 0.4, atol=1e-4)


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((np.zeros((4, 8, 8), np.float32), np.arange(4)), {}, "uint8"),
        ((np.zeros((4, 3, 8, 3), np.uint8), np.arange(4)), {}, "layout="),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(3)), {}, "one integer label per image"),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(4.0)), {}, "one integer label per image"),
        ((np.zeros((0, 8, 8), np.uint8), np.arange(0)), {}, "one integer label per image"),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(4)), {"amplitude": 10, "trigger": np.zeros((8, 8))}, "trigger kind name"),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(4)), {"trigger": "adaptive"}, "perturbd trigger make"),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(4)), {"trigger": "grid", "amplitud": 3}, "amplitude"),
        ((np.zeros((4, 8, 8), np.uint8), np.arange(4)), {"trigger": "grid", "rate": 1.5}, "rate"),
    ],
)
def test_mistakes_are_one_line_errors(args, kwargs, message) -> None:
    kwargs = {"trigger": "grid", **kwargs}
    with pytest.raises(ConfigError, match=message):
        perturbd.poison(*args, kwargs.pop("trigger"), **kwargs)


@pytest.mark.parametrize(
    "kind,params",
    [
        ("blended", {"alpha": 0.2}),
        ("sig", {"sig_amplitude": 20}),
        ("wanet", {"grid_k": 4}),
        ("ftrojan", {"magnitude": 30}),
        ("bpp", {"squeeze_num": 8}),
        ("adap_blend", {"alpha": 0.15}),
    ],
)
def test_new_kinds_by_name(grey, kind, params) -> None:
    x, y = grey
    out = perturbd.poison(x, y, kind, rate=0.1, **params)
    assert out.x.dtype == x.dtype and out.x.shape == x.shape and len(out.indices) == round(0.1 * len(x))
    assert (out.y[out.indices] == 0).all()


def test_clean_label_by_keyword(grey) -> None:
    x, y = grey
    out = perturbd.poison(x, y, "sig", rate=0.1, target=2, mode="clean_label")
    assert (y[out.indices] == 2).all() and (out.y == y).all()
