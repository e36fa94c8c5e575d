"""``arrays:<digest>``: images and labels handed to :func:`perturbd.run` as arrays.

``perturbd.run(cfg, data=(x_train, y_train, x_test, y_test))`` takes numpy arrays or torch
tensors in the layouts and value ranges of ``npz:PATH`` (:mod:`perturbd.data.npz`: uint8
``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)`` pixels, or floats in [0, 1]; integer labels),
checked by the same code with the same one-line errors. :func:`register_arrays` keeps them in
this process and names them ``arrays:<16 hex digits of the SHA-256 of their content>``: that name
goes into ``data.name``, so the run directory's hash and the clean-twin cache name the data by
what it holds. The name means nothing to another process (a sweep on Ray, ``perturbd defend``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from perturbd.data.dataset import DataSplit
from perturbd.data.npz import REQUIRED, split_from_arrays
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


def _numpy(value: Any, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) or (key == "classes" and isinstance(value, (list, tuple))):
        return np.asarray(value)
    raise DataError(f"{_USAGE}; {key} is a {type(value).__name__}")


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
