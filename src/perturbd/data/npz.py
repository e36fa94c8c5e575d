"""``npz:PATH``: a data set saved with ``numpy.savez`` / ``numpy.savez_compressed``.

Keys:

==========  ========  =====================================================================
key         needed    content
==========  ========  =====================================================================
x_train     yes       training images: ``(N, H, W)`` (grey), ``(N, H, W, C)`` or
                      ``(N, C, H, W)`` with C in {1, 3}
y_train     yes       ``(N,)`` integer labels in ``[0, K)``
x_test      yes       test images, same layout and H × W as ``x_train``
y_test      yes       ``(M,)`` integer labels in ``[0, K)``
classes     no        ``(K,)`` array of str, class names by label; default ``"0"`` … ``"K-1"``
                      with K = the largest label + 1
==========  ========  =====================================================================

Pixel values: uint8 (0–255, used as they are), other integers in 0–255 (cast), or floats in
[0, 1] (multiplied by 255 and rounded to the nearest integer; values within 1e-6 of the range
are clipped). NaN, inf or values outside the range are errors. A 4-D array is read as
channels-first when its axis 1 has size 1 or 3, else as channels-last when its last axis does.

The file is read with ``np.load(path, allow_pickle=False)``: object arrays are refused, nothing
is unpickled. Example::

    np.savez("digits.npz", x_train=x, y_train=y, x_test=xt, y_test=yt, classes=np.array(["a", "b"]))
    perturbd run --set data.name=npz:digits.npz
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from perturbd.data.dataset import DataSplit
from perturbd.data.sources import SourceRequest, make_split, register_source
from perturbd.errors import DataError
from perturbd.limits import check_label_bound, memory_bytes

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
FLOAT_TOLERANCE = 1e-6  # float pixels this far outside [0, 1] are clipped, farther is an error
SAVE_HINT = "save with np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=..., classes=...)"


def _path(req: SourceRequest) -> Path:
    return Path(req.arg or "").expanduser().resolve()


def _images(x: np.ndarray, key: str, where: str) -> torch.Tensor:
    """``x`` as uint8 ``(N, C, H, W)`` pixels 0–255; DataError on a bad shape, dtype or value."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        pass
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{where}: {key} must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {{1, 3}}, "
            f"got shape {x.shape}; reshape it before saving"
        )
    if len(x) == 0:
        raise DataError(f"{where}: {key} holds no images; {SAVE_HINT}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"{where}: {key} holds NaN or inf values; replace them before saving")
        lo, hi = float(x.min()), float(x.max())
        if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
            raise DataError(
                f"{where}: {key} is {x.dtype} with values in [{lo:g}, {hi:g}], expected [0, 1]; "
                f"divide 0–255 pixels by 255 or save them as uint8"
            )
        scaled = np.rint(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(scaled))
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{where}: {key} is {x.dtype} with values in [{lo}, {hi}], expected pixels 0–255; save uint8 pixels or floats in [0, 1]"
            )
        return torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8)))
    raise DataError(f"{where}: {key} has dtype {x.dtype}; save uint8 pixels 0–255 or floats in [0, 1]")


def _labels(y: np.ndarray, key: str, n: int, where: str) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DataError(
            f"{where}: {key} must be a 1-D array of integer labels, got {y.dtype} of shape {y.shape}; "
            f"save class indices 0…K-1 (e.g. y.astype(np.int64))"
        )
    if len(y) != n:
        raise DataError(f"{where}: {key} has {len(y)} labels for {n} images; give one label per image")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{where}: {key} holds negative labels (min {int(y.min())}); labels must be 0…K-1")
    if len(y) and int(y.max()) > np.iinfo(np.int64).max:  # uint64 beyond int64: read as it is, not wrapped negative
        raise DataError(f"{where}: {key} holds label {int(y.max())}, beyond any class count; labels must be 0…K-1")
    if len(y):
        check_label_bound(int(y.max()), f"{where}: {key}")
    return torch.from_numpy(y.astype(np.int64))


def _classes(arrays: dict[str, np.ndarray], k: int, where: str) -> tuple[str, ...]:
    if "classes" not in arrays:
        return tuple(str(c) for c in range(k))
    names = arrays["classes"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{where}: classes must be a 1-D array of str, got {names.dtype} of shape {names.shape}; save np.array(['cat', 'dog', ...])"
        )
    if len(names) < k:
        raise DataError(f"{where}: labels go up to {k - 1} but classes has only {len(names)} names; give one name per label")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


def read_npz(path: Path, name: str) -> DataSplit:
    """Read and check an npz data set (see the module docstring for the keys)."""
    if not path.is_file():
        raise DataError(f"npz: no file at {path}; write npz:PATH with PATH an .npz file ({SAVE_HINT})")
    try:
        if not zipfile.is_zipfile(path):  # a single array is not read either: its header may lie
            with path.open("rb") as fh:
                if fh.read(6) == b"\x93NUMPY":
                    raise DataError(f"npz {path} holds a single array, not an npz archive; {SAVE_HINT}")
            raise ValueError("not a zip archive")
        _check_declared_sizes(path)
        loaded = np.load(path, allow_pickle=False)  # an archive: its arrays are read below, one by one
        with loaded as archive:
            found = list(archive.files)
            missing = [k for k in REQUIRED if k not in found]
            if missing:
                raise DataError(f"npz {path} lacks key(s) {', '.join(missing)}; found: {', '.join(found) or 'none'}; {SAVE_HINT}")
            arrays = {k: archive[k] for k in (*REQUIRED, "classes") if k in found}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"npz {path} cannot be read ({err}); {SAVE_HINT} without object arrays") from err
    return split_from_arrays(arrays, name, f"npz {path}")


def split_from_arrays(arrays: dict[str, np.ndarray], name: str, where: str) -> DataSplit:
    """Check and convert ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and ``classes``) as
    the module docstring says; ``where`` starts every error (``npz PATH``)."""
    x_train = _images(arrays["x_train"], "x_train", where)
    x_test = _images(arrays["x_test"], "x_test", where)
    y_train = _labels(arrays["y_train"], "y_train", len(x_train), where)
    y_test = _labels(arrays["y_test"], "y_test", len(x_test), where)
    k = max(int(y_train.max()), int(y_test.max())) + 1
    classes = _classes(arrays, k, where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{where}: x_train images are {tuple(x_train.shape[1:])} (C, H, W) but x_test images are "
            f"{tuple(x_test.shape[1:])}; give both at one size and channel count"
        )
    return make_split(name, x_train, y_train, x_test, y_test, classes)


class _Member(NamedTuple):
    """One ``.npy`` member of an archive as its header declares it."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stored: int  # bytes the archive holds for its data (after the header)


def _members(path: Path) -> list[_Member]:
    """Every ``.npy`` member's declared shape and dtype, read from its header without the data."""
    members = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
                members.append(_Member(info.filename[: -len(".npy")], shape, dtype, info.file_size - fh.tell()))
    return members


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes from the ``.npy`` headers inside the archive, without reading the data."""
    return {m.key: m.shape for m in _members(path)}


def _check_declared_sizes(path: Path) -> None:
    """Every ``.npy`` member's size from its header, before any data is read: at most the bytes
    the archive holds for it (a header that claims more is a lie or a truncation) and at most this
    machine's memory (a compression bomb); a one-line :class:`DataError` otherwise."""
    memory = memory_bytes()
    for m in _members(path):
        size = int(np.prod(m.shape, dtype=object)) * m.dtype.itemsize
        shown = "×".join(map(str, m.shape)) or "()"
        if memory is not None and size > memory:
            raise DataError(f"npz {path}: {m.key} ({shown} {m.dtype}) needs {size:,} bytes, more than this machine's memory ({memory:,})")
        if not m.dtype.hasobject and size > m.stored:
            raise DataError(
                f"npz {path}: {m.key} declares {shown} {m.dtype} ({size:,} bytes) but holds {m.stored:,}; the file is truncated or corrupt"
            )


def _status(req: SourceRequest) -> str:
    if not req.arg:
        return "needs a file: write npz:PATH"
    path = _path(req)
    if not path.is_file():
        return f"missing: no file at {path}"
    try:
        shapes = _header_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return f"unreadable: {path} is not an npz archive ({err})"
    missing = [k for k in REQUIRED if k not in shapes]
    if missing:
        return f"unreadable: {path} lacks key(s) {', '.join(missing)}"
    return f"present ({shapes['x_train'][0]:,} + {shapes['x_test'][0]:,} images)"


@register_source("npz", status=_status, param="PATH", summary="your arrays in an .npz file (x_train, y_train, …)")
def npz(req: SourceRequest) -> DataSplit:
    """Images and labels from an ``.npz`` file (keys in the module docstring)."""
    return read_npz(_path(req), req.name)
