"""What a run trains that other runs can reuse: the victim's clean model, and the adversary's mask.

The victim's clean model (its architecture trained with the run seed on its clean data) is needed
by the adversary under knowledge ``full`` (it computes the mask on it), by the
``before_training`` setting (it is the clean twin) and by the ``update`` setting (it is the
pre-update model). :class:`TwinStore` trains it once per run, keeps it in memory, and, given a
folder (a sweep's ``.twins/``), stores it on disk so that every run of a sweep with the same
data, model, training and seed loads it instead of training it again.

The key of a clean model is the SHA-256 of what trains it: the architecture (with the SHA-256 of
the files its model section names: weights, TorchScript file, factory's source), the training config
(its ``device`` replaced by the device kind, and on a CPU the number of threads it trains with, which changes
the float results), the seed, a fingerprint of the data's pixels and labels, the device kind (the
GPU's name; on a CPU its model and instruction sets, which change the float results too) and
the code (:func:`~perturbd.provenance.code_digest`: a twin trained by other code is never reused). A pre-trained
checkpoint (``attack.checkpoint``) is read once and kept the same way, by its path.

An adaptive mask depends on what the adversary has and does, not on how many images it then
poisons: :meth:`TwinStore.mask` keeps it under the key of everything but the injection rate (and
the update's epochs and learning rate), so the runs of a sweep over rates compute it once.

Layout: ``<folder>/<key16>/model.safetensors`` and ``twin.json``; ``<folder>/masks/<key16>/
trigger.safetensors`` and ``record.json``; each written to a temporary folder and renamed
(:func:`perturbd.runs.rundir.atomic_dir`). Two processes that need the same one at once take turns on
its ``.lock`` file; the second one loads what the first one stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from perturbd.config import ExperimentConfig, ModelConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import CheckpointError
from perturbd.models import build_model, load_model_weights, save_model
from perturbd.models.external import spec_files
from perturbd.provenance import code_digest, cpu_name
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import atomic_dir, read_json, write_json
from perturbd.train import Monitor, fit
from perturbd.triggers import Trigger

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; the atomic writes still hold
    fcntl = None  # type: ignore[assignment]

VERSION = 2


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files(spec: ModelConfig) -> dict[str, str]:
    """SHA-256 of the files a model section names (:func:`~perturbd.models.external.spec_files`)."""
    return {k: file_sha256(p) for k, p in spec_files(spec).items()}


def data_fingerprint(data: ImageDataset) -> str:
    """SHA-256 of the images (bytes, dtype, shape), labels and class names."""
    h = hashlib.sha256()
    h.update(json.dumps([list(data.images.shape), str(data.images.dtype), list(data.classes)]).encode())
    h.update(data.images.contiguous().cpu().numpy().tobytes())
    h.update(data.labels.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cpu_threads(device: torch.device) -> int | None:
    """The CPU threads a model trains with in this process (they change its float results: an
    entry point sets them from ``train.threads``, :mod:`perturbd.process`); None on a GPU."""
    return torch.get_num_threads() if device.type == "cpu" else None


def device_kind(device: torch.device) -> str:
    """``cpu:<CPU name>`` (:func:`~perturbd.provenance.cpu_name`) or ``cuda:<GPU name>``: the device part
    of a twin key (results differ between them, from one CPU to another too)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_name()}" if device.type == "cpu" else device.type


def twin_key(cfg: ExperimentConfig, data: ImageDataset, device: torch.device) -> str:
    """16 hex digits naming the victim's clean model of ``cfg`` trained on ``data`` on ``device``."""
    train = {**cfg.train.model_dump(mode="json", exclude={"device"}), "threads": cpu_threads(device)}
    parts = {
        "version": VERSION, "model": cfg.model.model_dump(mode="json"), "model_files": model_files(cfg.model), "train": train,
        "seed": cfg.seed, "data": data_fingerprint(data), "device": device_kind(device), "code": code_digest(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def mask_key(cfg: ExperimentConfig, train: ImageDataset, device: torch.device) -> str:
    """16 hex digits naming the adaptive mask of ``cfg`` on the training split ``train``: the
    whole config but what does not change the mask (the injection rate, quantization, the
    update's epochs and learning rate, defences, where data and devices are named), the data's
    fingerprint, the device kind and the code."""
    leave_out: dict[str, bool | set[str]] = {
        "name": True, "defenses": True, "data": {"root", "download"}, "poison": {"rate", "quantize"},
        "train": {"device", "threads"}, "attack": {"update_epochs", "update_lr"},
    }  # fmt: skip
    parts = {
        "version": VERSION, "config": cfg.model_dump(mode="json", exclude=leave_out), "threads": cpu_threads(device),
        "model_files": model_files(cfg.model), "data": data_fingerprint(train),
        "device": device_kind(device), "code": code_digest(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint as read: the model with its weights, and the SHA-256 of the file."""

    model: nn.Module
    sha256: str


@dataclass
class Twin:
    """A clean model and where it came from: ``seconds`` spent training it in this process
    (0 when reused) and the training's ``images_per_s`` (0 when reused), ``source`` one line for logs."""

    model: nn.Module
    seconds: float
    source: str
    images_per_s: float = 0.0


class TwinStore:
    """The clean models of one run (in memory), shared through ``folder`` across runs (on disk).

    Models handed out are shared, not copied: a caller that trains one further copies it first.
    """

    def __init__(self, folder: Path | None = None, monitor: Monitor | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.monitor = monitor
        self._memo: dict[str, nn.Module] = {}
        self._checkpoints: dict[str, Pretrained] = {}

    def clean_model(self, cfg: ExperimentConfig, data: ImageDataset, device: torch.device, description: str = "clean twin") -> Twin:
        """The victim architecture, initialised and trained with ``cfg.seed`` on ``data``."""
        key = twin_key(cfg, data, device)
        if key in self._memo:
            return Twin(self._memo[key], 0.0, "trained earlier in this run (same data, model, training and seed)")
        model = build_model(cfg.model, data.image_shape, data.num_classes, seed=cfg.seed)
        with self._slot(key) as folder:
            if folder is not None and _load(model, folder, device):
                self._memo[key] = model
                return Twin(model, 0.0, f"reused {folder} (same data, model, training, seed, device and code; trained once)")
            result = fit(model, data, cfg.train, cfg.seed, monitor=self.monitor, description=description)
            if folder is not None:
                with atomic_dir(folder) as tmp:
                    save_model(model, tmp / RunDir.MODEL)
                    write_json(
                        tmp / "twin.json", {"key": key, "train_seconds": result.seconds, "stored": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    )
        self._memo[key] = model
        return Twin(model, result.seconds, f"trained in {result.seconds:.1f} s ({result.images_per_s:.0f} img/s)", result.images_per_s)

    def checkpoint(self, cfg: ExperimentConfig, image_shape: tuple[int, int, int], num_classes: int) -> Pretrained:
        """The victim architecture with the weights of ``attack.checkpoint``, and the file's
        SHA-256: read once per run (the file is only read, never written).

        Raises:
            CheckpointError: missing file, or weights of another architecture or shape.
        """
        path = Path(cfg.attack.checkpoint).expanduser()  # type: ignore[arg-type]
        key = f"{path.resolve()}:{cfg.model.name}:{image_shape}:{num_classes}"
        if key not in self._checkpoints:
            if not path.is_file():
                raise CheckpointError(f"attack.checkpoint not found: {path}; give a model file (.safetensors, .pt, .pth)")
            model = build_model(cfg.model, image_shape, num_classes, weights=path).eval()
            self._checkpoints[key] = Pretrained(model, file_sha256(path))
        return self._checkpoints[key]

    def mask(self, key: str, build: Callable[[], tuple[Trigger, dict[str, Any]]]) -> tuple[Trigger, dict[str, Any]]:
        """The adaptive mask and the adversary's record of ``key`` (:func:`mask_key`): read from
        the store, or ``build()`` and stored. A reused record says so (``reused_from``)."""
        with self._slot(key, "masks") as folder:
            if folder is not None and (folder / "record.json").is_file():
                try:
                    return Trigger.load(folder / RunDir.TRIGGER), {**read_json(folder / "record.json"), "reused_from": folder.name}
                except (CheckpointError, OSError, ValueError):
                    shutil.rmtree(folder, ignore_errors=True)
            trigger, record = build()
            if folder is not None:
                with atomic_dir(folder) as tmp:
                    trigger.save(tmp / RunDir.TRIGGER)
                    write_json(tmp / "record.json", record)
        return trigger, record

    @contextmanager
    def _slot(self, key: str, kind: str = "") -> Iterator[Path | None]:
        """The folder of ``key`` in the store (under ``kind``), held under a cross-process lock
        (None without a store)."""
        if self.folder is None:
            yield None
            return
        where = self.folder / kind if kind else self.folder
        where.mkdir(parents=True, exist_ok=True)
        with open(where / f"{key}.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield where / key
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)


def _load(model: nn.Module, folder: Path, device: torch.device) -> bool:
    """Load a stored twin into ``model``; a corrupt one is removed (and retrained by the caller)."""
    if not folder.is_dir():
        return False
    try:
        load_model_weights(model, folder / RunDir.MODEL)
    except (CheckpointError, OSError, ValueError):
        shutil.rmtree(folder, ignore_errors=True)
        return False
    model.to(device).eval()
    return True
