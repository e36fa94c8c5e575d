"""Standard data sets through ``torchvision.datasets``: mnist, fashion-mnist, cifar10, svhn, gtsrb.

Files are looked for under ``data.root`` in torchvision's own layout (e.g. ``ROOT/MNIST/raw/``)
and downloaded there only with ``data.download=true``. The images are converted in bulk from
the data sets' ``.data`` arrays (GTSRB, whose images vary in size, is decoded once and resized
to 32×32) to uint8 ``(N, C, H, W)`` in pixel units 0–255, and cached as a ``.pt`` file in the
cache folder (see :func:`perturbd.data.sources.cache_dir`), keyed by the source name, the
resolved root and the size and mtime of the data files. The root itself is never written to
unless downloading.

Nothing found under the root is trusted: torchvision checks the MD5 of every CIFAR-10 batch before
unpickling it (a tampered batch is a corrupt-data error, never executed), downloaded archives are
checked against their MD5 before extraction, and extraction itself runs under tarfile's ``data``
filter (:func:`safe_extraction`), which refuses members that would land outside the root, links
pointing out of it and device files. ``zipfile`` already strips ``..`` and absolute paths.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from PIL import Image

from perturbd.data.dataset import DataSplit
from perturbd.data.sources import (
    SourceRequest,
    cache_file,
    file_stamps,
    make_split,
    read_cache,
    register_source,
    write_cache,
)
from perturbd.errors import DataError
from perturbd.imageread import open_image

# what torchvision and its readers raise on missing, truncated or corrupt files
READ_ERRORS = (RuntimeError, OSError, ValueError, AssertionError, KeyError, EOFError, SyntaxError, pickle.UnpicklingError)
GTSRB_SIZE = 32  # GTSRB images are resized to GTSRB_SIZE × GTSRB_SIZE pixels

Arrays = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W) images, int64 (N,) labels


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to load one torchvision data set.

    Attributes:
        name: perturbd source name.
        cls: class name in ``torchvision.datasets`` (looked up when loading).
        layout: what must lie under the root, for messages (``"MNIST/raw"``).
        files: paths under the root that must all exist; their stamps key the cache.
        sizes: (train, test) image counts, for :func:`source_status`.
        shape: (C, H, W) of the converted images.
        split: ``train? -> constructor kwargs`` (``{"train": True}`` or ``{"split": "train"}``).
        arrays: converts a constructed torchvision data set into :data:`Arrays`.
        classes: class names; ``None`` takes the data set's ``.classes``.
    """

    name: str
    cls: str
    layout: str
    files: tuple[str, ...]
    sizes: tuple[int, int]
    shape: tuple[int, int, int]
    split: Callable[[bool], dict[str, Any]]
    arrays: Callable[[Any], Arrays]
    classes: tuple[str, ...] | None = None


def _train_flag(train: bool) -> dict[str, Any]:
    return {"train": train}


def _split_name(train: bool) -> dict[str, Any]:
    return {"split": "train" if train else "test"}


def _idx_arrays(ds: Any) -> Arrays:
    """MNIST-like: ``ds.data`` is uint8 ``(N, H, W)``, ``ds.targets`` int64 ``(N,)``."""
    return ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def _hwc_arrays(ds: Any) -> Arrays:
    """CIFAR-like: ``ds.data`` is a uint8 ``(N, H, W, C)`` array, ``ds.targets`` a list."""
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.long)


def _chw_arrays(ds: Any) -> Arrays:
    """SVHN: ``ds.data`` is a uint8 ``(N, C, H, W)`` array, ``ds.labels`` an int array (0–9)."""
    return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels, dtype=torch.long)


def _gtsrb_chunk(paths: list[str]) -> list[torch.Tensor]:
    """Decode ``.ppm`` files with Pillow and resize each to GTSRB_SIZE² RGB (bilinear, antialiased)."""
    out = []
    for path in paths:
        with open_image(path, "GTSRB image") as im:
            small = im.convert("RGB").resize((GTSRB_SIZE, GTSRB_SIZE), Image.Resampling.BILINEAR)
        out.append(torch.from_numpy(np.array(small)).permute(2, 0, 1))
    return out


def _gtsrb_arrays(ds: Any) -> Arrays:
    """GTSRB: decode every image (sizes vary) and resize it, in a thread pool (Pillow releases the GIL)."""
    samples: list[tuple[str, int]] = list(ds._samples)
    if not samples:
        raise RuntimeError("no images found")
    paths = [p for p, _ in samples]
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = [image for part in pool.map(_gtsrb_chunk, chunks) for image in part]
    return torch.stack(images), torch.tensor([t for _, t in samples], dtype=torch.long)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = (*tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_DIGITS = tuple(str(d) for d in range(10))

SPECS = (
    TorchvisionSpec(
        "mnist", "MNIST", "MNIST/raw", tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
        (60_000, 10_000), (1, 28, 28), _train_flag, _idx_arrays, _DIGITS,
    ),
    TorchvisionSpec(
        "fashion-mnist", "FashionMNIST", "FashionMNIST/raw", tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
        (60_000, 10_000), (1, 28, 28), _train_flag, _idx_arrays,
    ),
    TorchvisionSpec(
        "cifar10", "CIFAR10", "cifar-10-batches-py", tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR_FILES),
        (50_000, 10_000), (3, 32, 32), _train_flag, _hwc_arrays,
    ),
    TorchvisionSpec(
        "svhn", "SVHN", "train_32x32.mat and test_32x32.mat", ("train_32x32.mat", "test_32x32.mat"),
        (73_257, 26_032), (3, 32, 32), _split_name, _chw_arrays, _DIGITS,
    ),
    TorchvisionSpec(
        "gtsrb", "GTSRB", "gtsrb/GTSRB",
        ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
        (26_640, 12_630), (3, GTSRB_SIZE, GTSRB_SIZE), _split_name, _gtsrb_arrays, tuple(str(c) for c in range(43)),
    ),
)  # fmt: skip


def _resolved(root: Path) -> Path:
    return Path(root).expanduser().resolve()


def _cache_path(spec: TorchvisionSpec, root: Path) -> Path:
    return cache_file(spec.name, str(root), file_stamps(root, spec.files))


def _present(spec: TorchvisionSpec, root: Path) -> bool:
    return all((root / f).exists() for f in spec.files)


def _missing_message(spec: TorchvisionSpec, root: Path) -> str:
    return (
        f"{spec.name} not found under {root}; pass --set data.download=true (needs internet) or --set data.root=DIR holding {spec.layout}"
    )


def _reason(err: BaseException) -> str:
    """The first line of an exception, for one-line messages."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@contextmanager
def safe_extraction() -> Iterator[None]:
    """Extract tar archives only under tarfile's ``data`` filter while inside (torchvision calls
    ``extractall`` without a filter, which Python 3.11–3.13 take as "trust everything")."""
    before = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = before


def _read(spec: TorchvisionSpec, root: Path, download: bool, name: str) -> DataSplit:
    """Construct the torchvision data sets and convert them; DataError on any file problem."""
    if not download and not _present(spec, root):
        raise DataError(_missing_message(spec, root))
    cls = getattr(torchvision.datasets, spec.cls)
    try:
        with safe_extraction():
            train = cls(root=str(root), download=download, **spec.split(True))
            test = cls(root=str(root), download=download, **spec.split(False))
        (x_train, y_train), (x_test, y_test) = spec.arrays(train), spec.arrays(test)
    except READ_ERRORS as err:
        if download and not _present(spec, root):
            raise DataError(
                f"{spec.name} download to {root} failed ({_reason(err)}); check the internet connection "
                f"and that {root} is writable, or pass --set data.root=DIR holding {spec.layout}"
            ) from err
        raise DataError(
            f"{spec.name} files under {root} are corrupt or incomplete ({_reason(err)}); replace "
            f"{spec.layout} (delete it and pass --set data.download=true) or pass --set data.root=DIR "
            f"holding a good copy"
        ) from err
    for x in (x_train, x_test):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != spec.shape:
            raise DataError(
                f"{spec.name} under {root} gave images {tuple(x.shape[1:])} {x.dtype}, expected "
                f"{spec.shape} uint8; replace {spec.layout} with the standard release"
            )
    classes = spec.classes or tuple(train.classes)
    return make_split(name, x_train, y_train, x_test, y_test, classes)


def load_torchvision(spec: TorchvisionSpec, req: SourceRequest) -> DataSplit:
    """Load ``spec`` from ``req.root`` (downloading if ``req.download``), through the cache."""
    root = _resolved(req.root)
    split = read_cache(_cache_path(spec, root), req.name)
    if split is None:
        split = _read(spec, root, req.download, req.name)
        write_cache(_cache_path(spec, root), split)  # stamps taken after a possible download
    return split


def torchvision_status(spec: TorchvisionSpec, req: SourceRequest) -> str:
    """``present (…)`` if the files are there (``cached`` once converted), else ``missing: …``."""
    root = _resolved(req.root)
    counts = f"{spec.sizes[0]:,} + {spec.sizes[1]:,} images"
    if _present(spec, root):
        cached = ", cached" if _cache_path(spec, root).is_file() else ""
        return f"present ({counts}{cached})"
    return f"missing: no {spec.layout} under {root}; --set data.download=true or data.root=DIR"


for _spec in SPECS:
    _shape = "×".join(map(str, _spec.shape))
    register_source(
        _spec.name,
        status=partial(torchvision_status, _spec),
        summary=f"torchvision {_spec.cls}, {_spec.sizes[0]:,} + {_spec.sizes[1]:,} images, {_shape}",
    )(partial(load_torchvision, _spec))
