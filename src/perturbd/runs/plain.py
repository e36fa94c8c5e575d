"""A plain model trained on a data set as it is, and measured: ``perturbd train``.

The export round trip: ``perturbd export RUN --to DIR`` writes a run's training set as trained on
(the poison included) as image files, with its trigger; :func:`train_plain` trains a model on
such a folder, or on any data set, with nothing held out and nothing poisoned, and measures its
clean accuracy and, given a trigger and a target, the attack success rate of that trigger
(:func:`perturbd.metrics.attack_success_rate`, the run's own definition).

An exported folder's training images are put back in the run's order (:func:`in_manifest_order`,
from its ``manifest.csv``), so that, trained with the run's config (model, training, seed) on the
same device, the model is the run's backdoored model and the numbers are the run's own. Any
other folder (or an export whose files were changed) trains in the folder's order (class
folders, then file names): the run's kind of numbers, not its bits. ``train.json`` says which.

``perturbd run`` is not the tool for this: it holds the adversary's share out of the data and
poisons again (``poison.rate`` must be above 0), and its clean twin is then trained on the
exported poison.

The folder written (to a temporary name, renamed when complete)::

    OUT/model.safetensors   the trained model (a perturbd checkpoint: ``perturbd defend`` takes it with --data)
    OUT/train.json          data, sizes, seed, clean accuracy, ASR with its trigger, target and
                            sources, seconds, the config used and the code that trained
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from perturbd.config import ExperimentConfig
from perturbd.data import ImageDataset, load_data
from perturbd.errors import ConfigError
from perturbd.metrics import attack_success_rate, attacked, clean_accuracy
from perturbd.models import build_model, save_model
from perturbd.progress import Monitor
from perturbd.provenance import code_identity
from perturbd.runs.rundir import atomic_dir, write_json
from perturbd.train import fit
from perturbd.triggers import Trigger
from perturbd.triggers.static import read_mask_file

MODEL = "model.safetensors"
RECORD = "train.json"
TRIGGER_SUFFIXES = (".npy", ".safetensors")
MANIFEST_BYTES_PER_ROW = 1024  # a manifest.csv larger than this per image is not an export's: not read


@dataclass(frozen=True)
class PlainResult:
    """What :func:`train_plain` wrote: its folder and the numbers of ``train.json``."""

    folder: Path
    record: dict[str, Any]

    @property
    def clean_accuracy(self) -> float:
        return float(self.record["clean_accuracy"])

    @property
    def attack_success_rate(self) -> float | None:
        asr = self.record["attack_success_rate"]
        return None if asr is None else float(asr)


def check_trigger_file(path: Path) -> Path:
    """Before anything loads: ``path`` is an existing ``.npy`` or ``.safetensors`` file."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in TRIGGER_SUFFIXES:
        raise ConfigError(
            f"--trigger {path}: give trigger.npy (δ in pixel units, as `perturbd export` writes it) or a .safetensors trigger "
            "(`perturbd trigger make`, a run's trigger.safetensors)"
        )
    if not path.is_file():
        raise ConfigError(f"--trigger {path}: no such file")
    return path


def read_trigger(path: Path) -> Trigger:
    """The trigger in ``path``: a ``.safetensors`` trigger (:meth:`Trigger.load`, any family) or a
    ``.npy`` mask δ in pixel units, ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``, applied rounded to
    whole grey levels (as the image files of an export carry it)."""
    path = check_trigger_file(path)
    if path.suffix.lower() == ".safetensors":
        return Trigger.load(path)
    return Trigger(read_mask_file(path, 255.0), "image", {"path": str(path)})


def _check_fits(trigger: Trigger, shape: tuple[int, int, int], source: str) -> None:
    c, h, w = shape
    d = trigger.delta
    if d.ndim != 3 or tuple(d.shape[-2:]) != (h, w) or d.shape[0] not in (1, c):
        raise ConfigError(
            f"--trigger {source} is {'×'.join(map(str, d.shape))} but the images are {c}×{h}×{w}; give the trigger of this data"
        )


def in_manifest_order(folder: Path, train: ImageDataset) -> ImageDataset | None:
    """``train``, read from the image folder ``folder``, in the order of its ``manifest.csv`` (as
    ``perturbd export`` writes it: a training image's file is named by its position in the run's
    set); ``None`` when there is no such manifest or it does not describe these very images
    (files added or removed, a subset taken): then the folder's order is kept.

    ``imagefolder`` reads class folders in label order and files by name, so the training images
    come as the manifest's rows sorted by (label, file name)."""
    path = folder / "manifest.csv"
    try:
        if not path.is_file() or path.stat().st_size > MANIFEST_BYTES_PER_ROW * (len(train) + 1):
            return None
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "train"]
        listed = sorted((int(r["label"]), r["file"]) for r in rows)
        positions = torch.tensor([int(PurePosixPath(f).stem) for _, f in listed], dtype=torch.long)
        labels = torch.tensor([label for label, _ in listed], dtype=torch.long)
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return None
    n = len(train)
    if len(positions) != n or not torch.equal(labels, train.labels) or not torch.equal(positions.sort().values, torch.arange(n)):
        return None
    back = torch.empty_like(positions)
    back[positions] = torch.arange(n)
    return train.subset(back)


def train_plain(
    cfg: ExperimentConfig,
    out: Path,
    *,
    trigger: Trigger | None = None,
    target: int | None = None,
    sources: list[int] | None = None,
    trigger_source: str = "",
    monitor: Monitor | None = None,
    replace: bool = False,
) -> PlainResult:
    """Train ``cfg.model`` on all of ``cfg.data``'s training split with ``cfg.train`` and
    ``cfg.seed`` (its poison, trigger, attack and defences sections are not read), measure it on
    the test split and write ``out`` (module docstring).

    Args:
        trigger: whose ASR to measure (with ``target``; ``sources``: the source classes of a
            source-specific attack, None for every class but the target).
        trigger_source: where the trigger came from, for ``train.json`` and messages.
        monitor: the training's progress (default: the active monitor).
        replace: swap out an existing ``out`` at the end (otherwise the caller checked it is new).

    Raises:
        ConfigError: a target outside the labels, a trigger of another shape, sources that name
            no class but the target; all before the training.
    """
    split = load_data(cfg.data, cfg.seed)
    train, test = split.train, split.test
    order = "folder"
    if cfg.data.name.startswith("imagefolder:"):
        restored = in_manifest_order(Path(cfg.data.name.split(":", 1)[1]), train)
        if restored is not None:
            train, order = restored, "manifest"
    if trigger is not None:
        if target is None or not 0 <= target < train.num_classes:
            raise ConfigError(f"--target must be a label in [0, {train.num_classes - 1}], got {target}")
        _check_fits(trigger, train.image_shape, trigger_source)
        if sources is not None and not [s for s in sources if s != target and 0 <= s < train.num_classes]:
            raise ConfigError(f"--source {sources} names no label of the data other than the target {target}")
        if not bool(attacked(test.labels, target, sources).any()):
            raise ConfigError(f"the test set has no image outside the target class {target} (sources {sources or 'all'}); ASR is undefined")
    model = build_model(cfg.model, train.image_shape, train.num_classes, seed=cfg.seed)
    started = time.perf_counter()
    fit(model, train, cfg.train, cfg.seed, monitor=monitor, description="model")
    seconds = time.perf_counter() - started
    precision = cfg.train.precision
    record: dict[str, Any] = {
        "data": cfg.data.name,
        "train_images": len(train),
        "train_order": order,
        "test_images": len(test),
        "image_shape": list(train.image_shape),
        "classes": list(train.classes),
        "seed": cfg.seed,
        "clean_accuracy": clean_accuracy(model, test, precision),
        "attack_success_rate": None,
        "trigger": None,
        "target": target if trigger is not None else None,
        "sources": sources if trigger is not None else None,
        "train_seconds": round(seconds, 3),
        "config": cfg.model_dump(mode="json", include={"model", "train", "seed"}),
        "code": code_identity(),
    }
    if trigger is not None and target is not None:  # (a trigger without a target was refused above)
        record["attack_success_rate"] = attack_success_rate(model, test, trigger, target, sources, precision)
        record["trigger"] = {"file": trigger_source, "kind": trigger.kind, "quantize": trigger.quantize}
    out = Path(out).expanduser()
    with atomic_dir(out, replace=replace) as tmp:
        save_model(model, tmp / MODEL, {"seed": str(cfg.seed), "data": cfg.data.name})
        write_json(tmp / RECORD, record)
    return PlainResult(out, record)
