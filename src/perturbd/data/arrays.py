"""``arrays:<digest>``: images and labels handed to :func:`perturbd.run` as arrays.

``perturbd.run(cfg, data=(x_train, y_train, x_test, y_test))`` takes numpy arrays or torch
tensors in the layouts and value ranges of ``npz:PATH`` (:mod:`perturbd.data.npz`: uint8
``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)`` pixels, or floats in [0, 1]; integer labels),
checked by the same code with the same one-line errors. :func:`register_arrays` keeps them in
this process and names them ``arrays:<16 hex digits of the SHA-256 of their content>``: that name
goes into ``data.name``, so the run directory's hash and the clean-twin cache name the data by
what it holds. The name means nothing to another process (a sweep on Ray, ``perturbd defend``).

:func:`as_dataset` converts one set of images (and labels) the same way, for
:func:`perturbd.defend` and a defence's ``fit``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.data.npz import REQUIRED, _images, _labels, split_from_arrays
from perturbd.data.sources import SourceRequest, register_source
from perturbd.errors import DataError

_SPLITS: dict[str, DataSplit] = {}
_USAGE = "data= takes (x_train, y_train, x_test, y_test) as numpy arrays or torch tensors, optionally with classes (names by label) fifth"


def register_arrays(data: Sequence[Any]) -> str:
    """Check ``(x_train, y_train, x_test, y_test[, classes])`` and keep it as the source
    ``arrays:<digest>``; returns that name."""
    if not isinstance(data, (tuple, list)) or len(data) not in (4, 5):
        raise DataError(f"{_USAGE}; got {type(data).__name__}{f' of {len(data)}' if isinstance(data, (tuple, list)) else ''}")
    arrays = {key: _numpy(value, key) for key, value in zip((*REQUIRED, "classes"), data)}
    split = split_from_arrays(arrays, "arrays", "data=")
    h = hashlib.sha256()
    for part in (split.train, split.test):
        h.update(repr((tuple(part.images.shape), part.classes)).encode())
        h.update(part.images.numpy().tobytes())
        h.update(part.labels.numpy().tobytes())
    name = f"arrays:{h.hexdigest()[:16]}"
    _SPLITS[name] = DataSplit(replace(split.train, name=name), replace(split.test, name=name))
    return name


def as_dataset(images: Any, labels: Any = None, *, num_classes: int | None = None, name: str = "data") -> ImageDataset:
    """Images and labels from another framework as an :class:`ImageDataset` (uint8 ``(N, C, H, W)``).

    Args:
        images: numpy array or torch tensor, ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``;
            uint8 pixels 0–255, or floats in [0, 1] (rounded to the nearest of 256 levels, as a
            saved image would be), as ``npz:`` data (:mod:`perturbd.data.npz`).
        labels: ``(N,)`` integer labels; None: all 0 (for what reads no labels: input screening).
        num_classes: the class count (the model's); default the largest label + 1 (at least 2).
        name: the data's name in messages and reports.

    Raises:
        DataError: one line naming what is wrong (layout, range, NaN, a label count or value).
    """
    usage = f"{name}: images and labels are numpy arrays or torch tensors"
    x = _images(_numpy(images, "x", usage), "x", name)
    y = torch.zeros(len(x), dtype=torch.int64) if labels is None else _labels(_numpy(labels, "y", usage), "y", len(x), name)
    k = max(int(y.max()) + 1 if len(y) else 0, 2) if num_classes is None else int(num_classes)
    if len(y) and int(y.max()) >= k:
        raise DataError(f"{name}: labels go up to {int(y.max())} but the model has {k} classes; give labels 0…{k - 1}")
    return ImageDataset(x, y, tuple(str(c) for c in range(k)), name)


def _numpy(value: Any, key: str, usage: str = _USAGE) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) or (key == "classes" and isinstance(value, (list, tuple))):
        return np.asarray(value)
    raise DataError(f"{usage}; {key} is a {type(value).__name__}")


def _status(req: SourceRequest) -> str:
    if req.name in _SPLITS:
        split = _SPLITS[req.name]
        return f"present in this process ({len(split.train):,} + {len(split.test):,} images)"
    return "missing: arrays are passed to perturbd.run(cfg, data=(x_train, y_train, x_test, y_test)) in the same process"


@register_source("arrays", status=_status, param="DIGEST", summary="arrays passed to perturbd.run(data=...) in this process")
def arrays(req: SourceRequest) -> DataSplit:
    """The arrays :func:`register_arrays` kept under ``req.name``."""
    if req.name not in _SPLITS:
        raise DataError(f"data '{req.name}': {_status(req)}")
    return _SPLITS[req.name]
