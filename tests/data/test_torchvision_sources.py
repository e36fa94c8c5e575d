"""torchvision-backed sources: missing and corrupt files, bulk conversion, the cache, real MNIST.

Real MNIST is found through the environment variable ``PERTURBD_DATA_ROOT`` (a folder holding
``MNIST/raw/``); the test using it is skipped when the variable is unset or the files are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from perturbd.config import DataConfig
from perturbd.data import load_data, source_status
from perturbd.data.torchvision_sources import SPECS
from perturbd.errors import DataError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _placeholders(root: Path, name: str) -> None:
    """Empty files where a torchvision data set's files would be (enough for the presence check)."""
    spec = next(s for s in SPECS if s.name == name)
    for rel in spec.files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="mnist", root=tmp_path))
    assert str(info.value) == (
        f"mnist not found under {tmp_path.resolve()}; pass --set data.download=true (needs internet) "
        f"or --set data.root=DIR holding MNIST/raw"
    )
    assert source_status("mnist", tmp_path).startswith(f"missing: no MNIST/raw under {tmp_path.resolve()}")


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("svhn", "train_32x32.mat"),
        ("gtsrb", "gtsrb/GTSRB"),
    ],
)
def test_missing_message_names_the_layout(tmp_path: Path, name: str, layout: str) -> None:
    with pytest.raises(DataError, match=f"{name} not found under .*holding {layout}"):
        load_data(DataConfig(name=name, root=tmp_path))


def test_corrupt_mnist_files_give_a_data_error(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        (raw / f).write_bytes(b"\x00\x00\x08\x03" + b"\x01" * 20)  # a valid magic number, then too little data
    message = r"mnist files under .* are corrupt or incomplete \(.*\); replace MNIST/raw"
    with pytest.raises(DataError, match=message) as info:
        load_data(DataConfig(name="mnist", root=tmp_path))
    assert "\n" not in str(info.value)


def test_failed_download_gives_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        def __init__(self, root: str, download: bool = False, **kwargs) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://…")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match=r"mnist download to .* failed \(RuntimeError: Error downloading train-images"):
        load_data(DataConfig(name="mnist", root=tmp_path, download=True))


def test_cifar_like_arrays_are_converted_in_bulk_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    _placeholders(tmp_path, "cifar10")
    rng = np.random.default_rng(0)
    made = []

    class FakeCIFAR10:
        classes = ["plane", "car"]  # noqa: RUF012 (torchvision declares it so)

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            n = 6 if train else 4
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # HWC, as torchvision keeps it
            self.targets = [i % 2 for i in range(n)]
            made.append(self)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    split = load_data(DataConfig(name="cifar10", root=tmp_path))
    assert split.train.images.shape == (6, 3, 32, 32) and split.test.images.shape == (4, 3, 32, 32)
    assert split.train.images.dtype == torch.uint8 and split.train.classes == ("plane", "car")
    assert np.array_equal(split.train.images[2].permute(1, 2, 0).numpy(), made[0].data[2])
    assert split.test.labels.tolist() == [0, 1, 0, 1]
    assert len(list(cache.glob("cifar10-*.pt"))) == 1
    assert source_status("cifar10", tmp_path) == "present (50,000 + 10,000 images, cached)"
    again = load_data(DataConfig(name="cifar10", root=tmp_path))
    assert len(made) == 2 and torch.equal(again.train.images, split.train.images)  # no third construction


def test_svhn_arrays_and_wrong_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _placeholders(tmp_path, "svhn")
    size = {"value": 32}

    class FakeSVHN:
        def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
            n = 5 if split == "train" else 3
            self.data = np.full((n, 3, size["value"], size["value"]), 7, np.uint8)
            self.labels = np.arange(n) % 10

    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    split = load_data(DataConfig(name="svhn", root=tmp_path))
    assert split.train.images.shape == (5, 3, 32, 32) and split.train.classes == tuple("0123456789")
    size["value"] = 28
    monkeypatch.setenv("PERTURBD_CACHE", str(tmp_path / "fresh-cache"))
    with pytest.raises(DataError, match=r"svhn under .* gave images \(3, 28, 28\) torch.uint8, expected \(3, 32, 32\)"):
        load_data(DataConfig(name="svhn", root=tmp_path))


def test_gtsrb_images_of_any_size_are_resized_to_32(tmp_path: Path) -> None:
    base = tmp_path / "gtsrb"
    for cls in (0, 1):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        for i, side in enumerate((30, 45, 61)):
            Image.fromarray(np.full((side, side + 3, 3), 40 * cls + i, np.uint8)).save(folder / f"{i:05d}.ppm")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate((1, 0)):
        Image.fromarray(np.full((50, 40, 3), 200 + i, np.uint8)).save(images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;40;50;0;0;40;50;{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    split = load_data(DataConfig(name="gtsrb", root=tmp_path))
    assert split.train.images.shape == (6, 3, 32, 32) and split.test.images.shape == (2, 3, 32, 32)
    assert split.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and split.test.labels.tolist() == [1, 0]
    assert split.train.images[4].unique().tolist() == [41]  # class 1, image 1: grey 40 + 1 at any size
    assert split.test.images[0].unique().tolist() == [200] and split.train.num_classes == 43


def _mnist_root() -> Path | None:
    root = os.environ.get("PERTURBD_DATA_ROOT")
    if not root or not all((Path(root) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        return None
    return Path(root)


@pytest.mark.skipif(_mnist_root() is None, reason="set PERTURBD_DATA_ROOT to a folder holding MNIST/raw")
def test_real_mnist_loads_converts_and_caches(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    root = _mnist_root()
    before = sorted(p.name for p in (root / "MNIST").rglob("*"))
    split = load_data(DataConfig(name="mnist", root=root))
    assert split.train.images.shape == (60_000, 1, 28, 28) and split.test.images.shape == (10_000, 1, 28, 28)
    assert split.train.images.dtype == torch.uint8 and split.train.classes == tuple("0123456789")
    assert split.train.counts().tolist()[:3] == [5923, 6742, 5958] and split.test.counts().sum() == 10_000
    assert split.train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first digits
    assert sorted(p.name for p in (root / "MNIST").rglob("*")) == before  # the root is only read
    assert source_status("mnist", root) == "present (60,000 + 10,000 images, cached)"

    class Unreachable:
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("torchvision was asked again")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Unreachable)
    again = load_data(DataConfig(name="mnist", root=root, train_limit=1000), seed=0)
    assert again.train.counts().sum() == 1000 and torch.equal(again.test.images, split.test.images)


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a hostile data file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_tampered_cifar_batch_is_refused_and_never_executed(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "executed"
    batches = tmp_path / "root" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for rel in next(s for s in SPECS if s.name == "cifar10").files:
        with open(tmp_path / "root" / rel, "wb") as fh:
            pickle.dump({"data": _Payload(marker), "labels": [0]}, fh)
    with pytest.raises(DataError, match=r"cifar10 files under .* are corrupt or incomplete") as info:
        load_data(DataConfig(name="cifar10", root=tmp_path / "root"))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_extraction_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    import io
    import tarfile

    from torchvision.datasets.utils import extract_archive

    from perturbd.data.torchvision_sources import safe_extraction

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("../escaped.txt", "inside.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "to").mkdir()
    with safe_extraction(), pytest.raises(tarfile.OutsideDestinationError):
        extract_archive(str(archive), str(tmp_path / "to"))
    assert not (tmp_path / "escaped.txt").exists()
    assert tarfile.TarFile.extraction_filter is None  # restored after the block
