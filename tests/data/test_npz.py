"""``npz:PATH`` sources: layouts, dtypes, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perturbd.config import DataConfig
from perturbd.data import load_data, source_status
from perturbd.errors import ConfigError, DataError


def _arrays(rng: np.random.Generator, n: int = 20, m: int = 10, shape=(8, 7)) -> dict[str, np.ndarray]:
    return {
        "x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "y_train": np.arange(n) % 3,
        "x_test": rng.integers(0, 256, (m, *shape), dtype=np.uint8),
        "y_test": np.arange(m) % 3,
    }


def _save(tmp_path: Path, name: str = "d.npz", compressed: bool = False, **arrays: np.ndarray) -> str:
    path = tmp_path / name
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return f"npz:{path}"


def test_round_trip_grey_uint8(tmp_path: Path) -> None:
    a = _arrays(np.random.default_rng(0))
    split = load_data(DataConfig(name=_save(tmp_path, compressed=True, **a)))
    assert split.train.images.shape == (20, 1, 8, 7) and split.train.images.dtype == torch.uint8
    assert np.array_equal(split.train.images[:, 0].numpy(), a["x_train"])
    assert np.array_equal(split.test.labels.numpy(), a["y_test"])
    assert split.train.classes == ("0", "1", "2")


def test_channels_last_and_channels_first_give_the_same_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hwc = {**_arrays(rng, shape=(8, 7, 3))}
    chw = {**hwc, "x_train": hwc["x_train"].transpose(0, 3, 1, 2), "x_test": hwc["x_test"].transpose(0, 3, 1, 2)}
    a = load_data(DataConfig(name=_save(tmp_path, "hwc.npz", **hwc)))
    b = load_data(DataConfig(name=_save(tmp_path, "chw.npz", **chw)))
    assert a.train.images.shape == (20, 3, 8, 7)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert np.array_equal(a.train.images[3].permute(1, 2, 0).numpy(), hwc["x_train"][3])


def test_float_pixels_are_scaled_and_rounded(tmp_path: Path) -> None:
    a = _arrays(np.random.default_rng(2))
    a["x_train"] = a["x_train"].astype(np.float32) / 255.0
    a["x_test"] = np.full((10, 8, 7), 0.5, np.float64)  # 127.5 rounds to even 128
    split = load_data(DataConfig(name=_save(tmp_path, **a)))
    assert split.train.images.dtype == torch.uint8
    assert np.array_equal(split.train.images[:, 0].numpy(), np.rint(a["x_train"] * 255).astype(np.uint8))
    assert int(split.test.images.min()) == int(split.test.images.max()) == 128


def test_class_names_are_taken_from_the_file(tmp_path: Path) -> None:
    a = _arrays(np.random.default_rng(3))
    split = load_data(DataConfig(name=_save(tmp_path, classes=np.array(["cat", "dog", "emu"]), **a)))
    assert split.train.classes == ("cat", "dog", "emu") == split.test.classes


def test_other_integer_pixels_in_range_are_accepted(tmp_path: Path) -> None:
    a = _arrays(np.random.default_rng(4))
    a["x_train"] = a["x_train"].astype(np.int64)
    split = load_data(DataConfig(name=_save(tmp_path, **a)))
    assert split.train.images.dtype == torch.uint8


def test_status_reads_shapes_without_loading(tmp_path: Path) -> None:
    name = _save(tmp_path, **_arrays(np.random.default_rng(5)))
    assert source_status(name, tmp_path) == "present (20 + 10 images)"
    assert source_status(f"npz:{tmp_path / 'nope.npz'}", tmp_path).startswith("missing: no file at")
    assert source_status(_save(tmp_path, "partial.npz", x_train=np.zeros(3)), tmp_path).startswith("unreadable:")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_test": None}, r"lacks key\(s\) x_test; found: x_train, y_train, y_test"),
        ({"x_train": np.full((20, 8, 7), np.nan, np.float32)}, "x_train holds NaN or inf"),
        ({"x_train": np.full((20, 8, 7), np.inf)}, "x_train holds NaN or inf"),
        ({"x_train": np.full((20, 8, 7), 2.0, np.float32)}, r"values in \[2, 2\], expected \[0, 1\]"),
        ({"x_test": np.full((10, 8, 7), -0.5)}, r"x_test is float64 with values in \[-0.5, -0.5\]"),
        ({"x_train": np.full((20, 8, 7), 300, np.int32)}, r"values in \[300, 300\], expected pixels 0–255"),
        ({"x_train": np.zeros((20, 8, 7, 5), np.uint8)}, r"must be \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\)"),
        ({"x_train": np.zeros((20, 8, 7), bool)}, "x_train has dtype bool"),
        ({"y_train": np.zeros(20, np.float32)}, "y_train must be a 1-D array of integer labels"),
        ({"y_train": np.zeros(19, np.int64)}, "y_train has 19 labels for 20 images"),
        ({"y_test": -np.ones(10, np.int64)}, "y_test holds negative labels"),
        ({"classes": np.array(["a", "b"])}, "labels go up to 2 but classes has only 2 names"),
        ({"classes": np.arange(3)}, "classes must be a 1-D array of str"),
        (
            {"x_test": np.zeros((10, 9, 9), np.uint8)},
            r"x_train images are \(1, 8, 7\) .* x_test images are \(1, 9, 9\)",
        ),
    ],
)
def test_bad_content_gives_one_line_data_error(tmp_path: Path, change: dict, message: str) -> None:
    a = {**_arrays(np.random.default_rng(6)), **change}
    name = _save(tmp_path, **{k: v for k, v in a.items() if v is not None})
    with pytest.raises(DataError, match=message) as info:
        load_data(DataConfig(name=name))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_object_arrays_are_refused_not_unpickled(tmp_path: Path) -> None:
    a = _arrays(np.random.default_rng(7))
    a["classes"] = np.array(["a", 1, None], dtype=object)
    with pytest.raises(DataError, match="cannot be read .*without object arrays"):
        load_data(DataConfig(name=_save(tmp_path, **a)))


def test_not_an_archive(tmp_path: Path) -> None:
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"\x00" * 50)
    with pytest.raises(DataError, match="cannot be read"):
        load_data(DataConfig(name=f"npz:{garbage}"))
    single = tmp_path / "one.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataError, match="holds a single array, not an npz archive"):
        load_data(DataConfig(name=f"npz:{single}"))


def test_missing_file_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"npz: no file at .*nope\.npz; write npz:PATH"):
        load_data(DataConfig(name=f"npz:{tmp_path / 'nope.npz'}"))
    with pytest.raises(ConfigError, match="write 'npz:PATH'"):
        load_data(DataConfig(name="npz:"))


def test_user_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _save(tmp_path, "home.npz", **_arrays(np.random.default_rng(8)))
    assert len(load_data(DataConfig(name="npz:~/home.npz")).train) == 20
