"""``imagefolder:PATH`` sources: layout, decoding, channels, cache and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perturbd.config import DataConfig
from perturbd.data import imagefolder, load_data, source_status
from perturbd.errors import ConfigError, DataError

# torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) and warns on every call
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def write_image(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _load(root: Path):
    return load_data(DataConfig(name=f"imagefolder:{root}"))


def test_grey_pngs_load_with_sorted_class_labels(make_folder) -> None:
    root = make_folder(classes=("b_cat", "a_dog"), per_class=(3, 2), size=(6, 5))
    split = _load(root)
    assert split.train.classes == ("a_dog", "b_cat")  # alphabetical = label order
    assert split.train.images.shape == (6, 1, 6, 5) and split.train.images.dtype == torch.uint8
    assert split.test.images.shape == (4, 1, 6, 5)
    assert split.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # a_dog was written second (grey levels 10 + i), b_cat first (0 + i); test adds 100
    assert split.train.images[:, 0, 0, 0].tolist() == [10, 11, 12, 0, 1, 2]
    assert split.test.images[:, 0, 0, 0].tolist() == [110, 111, 100, 101]


def test_colour_pngs_keep_three_channels(make_folder) -> None:
    split = _load(make_folder(rgb=True))
    assert split.train.images.shape[1] == 3


def test_one_colour_image_makes_all_rgb(make_folder) -> None:
    root = make_folder(size=(4, 4))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    write_image(root / "train" / "a_dog" / "zz.png", rgb)
    split = _load(root)
    assert split.train.images.shape == (7, 3, 4, 4) and split.test.images.shape[1] == 3
    grey = split.train.images[0]  # a grey image, replicated into R, G and B
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert split.train.images[3, :, 0, 0].tolist() == [200, 0, 0]


def test_alpha_is_dropped_and_other_formats_decode(make_folder) -> None:
    root = make_folder(size=(4, 4))
    rgba = np.full((4, 4, 4), 50, np.uint8)
    rgba[..., 3] = 0
    write_image(root / "train" / "a_dog" / "alpha.png", rgba)
    write_image(root / "train" / "a_dog" / "bitmap.bmp", np.full((4, 4), 77, np.uint8))
    split = _load(root)
    assert split.train.images.shape[1] == 3
    names = sorted(os.listdir(root / "train" / "a_dog"))  # labels are in name order
    assert split.train.images[names.index("alpha.png"), :, 0, 0].tolist() == [50, 50, 50]
    assert split.train.images[names.index("bitmap.bmp"), :, 0, 0].tolist() == [77, 77, 77]


def test_palette_and_16_bit_pngs(make_folder) -> None:
    root = make_folder(size=(4, 4))
    grey_palette = Image.fromarray(np.full((4, 4), 77, np.uint8)).convert("P")
    grey_palette.save(root / "train" / "a_dog" / "p.png")
    Image.fromarray(np.full((4, 4), 60000, np.uint16)).save(root / "train" / "a_dog" / "q16.png")
    split = _load(root)
    names = sorted(os.listdir(root / "train" / "a_dog"))
    assert split.train.images.shape[1] == 1  # a grey palette keeps the set grey
    assert int(split.train.images[names.index("p.png"), 0, 0, 0]) == 77
    assert int(split.train.images[names.index("q16.png"), 0, 0, 0]) == 60000 // 257
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 255
    Image.fromarray(colour).convert("P").save(root / "test" / "a_dog" / "p.png")
    split = _load(root)
    at = sorted(os.listdir(root / "test" / "a_dog")).index("p.png")
    assert split.test.images[at, :, 0, 0].tolist() == [0, 0, 255]  # colours, not palette indices


def test_jpegs_decode_in_batches_and_across_threads(make_folder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagefolder, "CHUNK", 2)  # several chunks: exercises the thread pool
    root = make_folder(per_class=(5, 2), size=(8, 8), rgb=True, suffix=".jpg")
    split = _load(root)
    assert split.train.images.shape == (10, 3, 8, 8)
    expected = [10, 11, 12, 13, 14, 0, 1, 2, 3, 4]  # flat JPEGs decode to within a grey level or two
    got = split.train.images[:, 0, 4, 4].tolist()
    assert all(abs(g - e) <= 2 for g, e in zip(got, expected)), got


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_pillow_fallback_decodes_the_same(make_folder, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    root = make_folder(size=(8, 8), rgb=True, suffix=suffix)
    with_torchvision = _load(root)
    monkeypatch.setattr(imagefolder, "_torchvision_io", lambda: None)
    monkeypatch.setenv("PERTURBD_CACHE", str(root.parent / "other-cache"))
    with_pillow = _load(root)
    diff = (with_torchvision.train.images.int() - with_pillow.train.images.int()).abs().max().item()
    assert with_pillow.train.images.shape == with_torchvision.train.images.shape and diff <= 2


def test_hidden_and_non_image_files_are_ignored(make_folder) -> None:
    root = make_folder()
    (root / "train" / "a_dog" / "notes.txt").write_text("hi")
    (root / "train" / "a_dog" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / ".git").mkdir()
    split = _load(root)
    assert len(split.train) == 6 and split.train.classes == ("a_dog", "b_cat")


def test_second_load_comes_from_the_cache_without_decoding(make_folder, monkeypatch, cache: Path) -> None:
    root = make_folder()
    first = _load(root)
    assert len(list(cache.glob("imagefolder-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imagefolder, "_decode_all", no_decoding)
    second = _load(root)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels) and first.train.classes == second.train.classes

    # a changed file changes the key: the folder is decoded again
    write_image(root / "train" / "a_dog" / "00.png", np.full((6, 5), 99, np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        _load(root)


def test_changed_file_is_picked_up(make_folder) -> None:
    root = make_folder()
    _load(root)
    path = root / "train" / "a_dog" / "00.png"
    write_image(path, np.full((6, 5), 99, np.uint8))
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size or the mtime differs
    assert int(_load(root).train.images[0, 0, 0, 0]) == 99


def test_corrupt_png_names_the_file(make_folder) -> None:
    root = make_folder()
    bad = root / "test" / "b_cat" / "01.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError, match=r"cannot decode test/b_cat/01\.png in .*; replace or remove the file"):
        _load(root)


def test_truncated_jpeg_in_a_batch_names_the_file(make_folder) -> None:
    root = make_folder(per_class=(4, 2), size=(16, 16), rgb=True, suffix=".jpg")
    bad = root / "train" / "b_cat" / "02.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot decode train/b_cat/02\.jpg"):
        _load(root)


def test_empty_file_names_the_file(make_folder) -> None:
    root = make_folder()
    (root / "train" / "a_dog" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot decode train/a_dog/empty\.png"):
        _load(root)


def test_mixed_sizes_name_a_file_and_both_sizes(make_folder) -> None:
    root = make_folder(size=(6, 5))
    write_image(root / "test" / "b_cat" / "big.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(DataError) as info:
        _load(root)
    message = str(info.value)
    assert "train/a_dog/00.png is 6×5" in message and "test/b_cat/big.png is 9×9" in message
    assert "resize all images to one size" in message and "\n" not in message


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: __import__("shutil").rmtree(r / "test"), "has no 'test' folder"),
        (
            lambda r: __import__("shutil").rmtree(r / "train" / "a_dog"),
            r"different class folders \(only in train: none, only in test: \['a_dog'\]\)",
        ),
        (lambda r: [p.unlink() for p in (r / "train" / "b_cat").iterdir()], r"train/b_cat holds no image files"),
        (lambda r: __import__("shutil").rmtree(r / "test") or (r / "test").mkdir(), "has no class folders"),
    ],
)
def test_layout_errors(make_folder, breakage, message: str) -> None:
    root = make_folder()
    breakage(root)
    with pytest.raises(DataError, match=message) as info:
        _load(root)
    assert "\n" not in str(info.value)


def test_missing_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"imagefolder: no folder at .*absent; write imagefolder:PATH"):
        _load(tmp_path / "absent")
    with pytest.raises(ConfigError, match="write 'imagefolder:PATH'"):
        load_data(DataConfig(name="imagefolder"))


def test_status_lines(make_folder, tmp_path: Path) -> None:
    root = make_folder()
    assert source_status(f"imagefolder:{root}", tmp_path) == "present (6 + 4 image files, 2 classes)"
    assert source_status(f"imagefolder:{tmp_path / 'absent'}", tmp_path).startswith("missing: no folder at")
    __import__("shutil").rmtree(root / "test")
    assert "has no 'test' folder" in source_status(f"imagefolder:{root}", tmp_path)


def test_one_class_is_refused(make_folder) -> None:
    with pytest.raises(DataError, match="at least 2 classes"):
        _load(make_folder(classes=("only",)))
