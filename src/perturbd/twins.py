"""A cache of clean twins, so that runs of a sweep that differ only in the poison share one.

The clean twin depends on the victim architecture, the training config, the seed and the victim's
training data, and on nothing about the trigger or the poison. Its key is the SHA-256 of those
(the data as a fingerprint of its pixels and labels, so ``data.train_limit`` or an auxiliary
split held out by the adversary give another key). ``train.device`` and ``train.threads`` are not
part of the key: they change how, not what, is trained.

Layout: ``<cache>/<key16>/model.safetensors`` and ``twin.json``, written to a temporary folder
and renamed (:func:`perturbd.rundir.atomic_dir`). Two processes that need the same twin at once
take turns on ``<cache>/<key16>.lock``; the second one loads what the first one stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from perturbd.config import ExperimentConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import CheckpointError
from perturbd.rundir import atomic_dir, read_json, write_json

VERSION = 1


def data_fingerprint(data: ImageDataset) -> str:
    """SHA-256 of the images (bytes, dtype, shape), labels and class names."""
    h = hashlib.sha256()
    h.update(json.dumps([list(data.images.shape), str(data.images.dtype), list(data.classes)]).encode())
    h.update(data.images.contiguous().cpu().numpy().tobytes())
    h.update(data.labels.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def twin_key(cfg: ExperimentConfig, victim_train: ImageDataset) -> str:
    """16 hex digits naming the clean twin of ``cfg`` trained on ``victim_train``."""
    train = cfg.train.model_dump(mode="json", exclude={"device", "threads"})
    parts = {"version": VERSION, "model": cfg.model.model_dump(mode="json"), "train": train, "seed": cfg.seed, "data": data_fingerprint(victim_train)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TwinSlot:
    """One twin's place in the cache. ``cached``: its weights were loaded into the model."""

    model: nn.Module
    folder: Path | None = None
    cached: bool = False
    info: dict[str, Any] | None = None

    def store(self, seconds: float) -> None:
        """Save the freshly trained model (no-op without a cache or if already stored)."""
        if self.folder is None or self.cached or self.folder.is_dir():
            return
        from perturbd.models.checkpoint import save_model

        with atomic_dir(self.folder) as tmp:
            save_model(self.model, tmp / "model.safetensors")
            write_json(tmp / "twin.json", {"key": self.folder.name, "train_seconds": seconds, "stored": time.strftime("%Y-%m-%dT%H:%M:%S")})


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, atomic writes still hold
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def shared_twin(cache: Path | None, cfg: ExperimentConfig, victim_train: ImageDataset, model: nn.Module, device: torch.device) -> Iterator[TwinSlot]:
    """Yield a :class:`TwinSlot` for ``model`` (freshly initialised). If the cache holds this
    twin its weights are loaded (``slot.cached``); otherwise train it and call ``slot.store``.

    Without a cache (``None``) nothing is read or written. A corrupt cached twin is ignored and
    replaced.
    """
    if cache is None:
        yield TwinSlot(model)
        return
    cache = Path(cache).expanduser()
    key = twin_key(cfg, victim_train)
    folder = cache / key
    with _locked(cache / f"{key}.lock"):
        slot = TwinSlot(model, folder)
        if folder.is_dir():
            from perturbd.models.checkpoint import load_model_weights

            try:
                load_model_weights(model, folder / "model.safetensors")
                model.to(device).eval()
                slot.cached, slot.info = True, read_json(folder / "twin.json")
            except (CheckpointError, OSError, ValueError):
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
        yield slot
