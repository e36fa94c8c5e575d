"""``perturbd export RUN_DIR --to DIR``: a run's data as files other tools read.

The folder written::

    DIR/train/<class>/<n>.png   the victim's training set as trained on (poison included, relabelled)
    DIR/test/<class>/<n>.png    the clean test set the run was measured on
    DIR/manifest.csv            file, label, original_label, poisoned, split (one row per image)
    DIR/trigger.npy             δ in pixel units (0–255 scale), float32 (C, H, W)
    DIR/trigger.png             round(δ) + 128, clipped to 0–255 (grey 128 = no change): the applied
                                mask pixel for pixel, exact where |δ| ≤ 127 (trigger.npy is always exact)

A trigger that is not an additive mask (``blended``, ``wanet``) has no δ: ``trigger.safetensors``
(the trigger itself, ``perturbd.triggers.Trigger.load``) replaces ``trigger.npy``, and
``trigger.png`` shows the mean change it makes to the test images, + 128.

PNGs are 8-bit and lossless: grey images as mode ``L``, colour as ``RGB``. ``<n>`` is the image's
position in the run's set (the victim's training images, or the test set), zero-padded so that
names sort in that order. Class folders are the data set's class names made safe for file names;
where those names would not sort in label order (or collide), each is prefixed with its label
(``03_cat``), so that ``data.name=imagefolder:DIR`` reads back the same labels and pixels.

The training set is rebuilt through :func:`perturbd.runs.saved.load_inputs` (the run's
partition, checked against its poison record). Runs of ``attack.setting: update`` (their
poison is in the update batch) and unquantized runs (their poison is float, not an image file)
cannot be exported. The folder is written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import csv
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perturbd.config import NAME_MAX, ExperimentConfig
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.progress import stage
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import atomic_dir, check_output
from perturbd.runs.saved import load_inputs
from perturbd.triggers import Trigger

MANIFEST_FIELDS = ("file", "label", "original_label", "poisoned", "split")
#: the files of a run folder that an export reads
RUN_FILES = (RunDir.CONFIG, RunDir.POISON_INDICES, RunDir.TRIGGER, RunDir.MODEL)
_UNSAFE = re.compile(r"[^\w.\- ]+")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote: the folder, image counts and the class folder names."""

    folder: Path
    train: int
    test: int
    poisoned: int
    class_folders: tuple[str, ...]


def safe_name(name: str) -> str:
    """``name`` usable as one folder name anywhere: letters, digits, ``. - _`` and spaces kept,
    every other run of characters replaced by ``_``; no leading dot or space; never empty; at most
    :data:`~perturbd.config.NAME_MAX` characters (a collision is then told apart by its label)."""
    safe = _UNSAFE.sub("_", str(name)).strip(" .")[:NAME_MAX]
    return safe or "class"


def class_folders(classes: tuple[str, ...]) -> tuple[str, ...]:
    """Folder names for ``classes`` that sort (as ``imagefolder`` sorts them) in label order."""
    safe = [safe_name(c) for c in classes]
    if len(set(safe)) == len(safe) and sorted(safe) == safe:
        return tuple(safe)
    width = len(str(len(classes) - 1))
    return tuple(f"{i:0{width}d}_{s}" for i, s in enumerate(safe))


def check_export(run_dir: Path, dest: Path, *, trust_code: bool = False) -> ExperimentConfig:
    """Every mistake that can be found before loading anything: a one-line :class:`ConfigError`
    (a run whose config names code to run among them, unless ``trust_code``: :mod:`perturbd.trust`)."""
    run, dest = RunDir(run_dir), Path(dest).expanduser()
    run_dir = run.path
    missing = run.missing(RUN_FILES)
    if not run_dir.is_dir() or missing:
        what = "no such folder" if not run_dir.is_dir() else f"it has no {', '.join(missing)}"
        raise ConfigError(f"{run_dir} is not a run directory ({what}); give a folder written by `perturbd run`")
    if dest.resolve().is_relative_to(run_dir.resolve()):
        raise ConfigError(f"--to {dest} is inside the run {run_dir}; give a folder outside it")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"--to {dest} exists and is not an empty folder; give a new folder")
    check_output(dest.parent, "--to", dest.name)
    cfg = run.stored_config(trust_code=trust_code)
    if cfg.attack.setting != "before_training":
        raise ConfigError(
            f"{run_dir} is a run of attack.setting={cfg.attack.setting}: its poison is in the update batch, not a training set; "
            "export runs of before_training"
        )
    if not cfg.poison.quantize:
        raise ConfigError(
            f"{run_dir} was run with poison.quantize=false: its poisoned images are float and cannot be PNG files; export a quantized run"
        )
    return cfg


def export_run(run_dir: Path, dest: Path, *, trust_code: bool = False) -> Exported:
    """Write the run in ``run_dir`` as an image folder at ``dest`` (see the module docstring).
    ``trust_code``: a run whose config names code to run (``factory:``, ``torchscript:``) is
    exported (its model is built); otherwise it is refused (:mod:`perturbd.trust`).

    Raises:
        ConfigError: not a run directory, ``dest`` not a new or empty folder, an update or
            unquantized run, a run naming code untrusted, or a run whose poison this version of
            perturbd cannot rebuild.
    """
    run_dir, dest = Path(run_dir).expanduser(), Path(dest).expanduser()
    check_export(run_dir, dest, trust_code=trust_code)
    inputs = load_inputs(run_dir, trust_code=trust_code)
    train, indices = inputs.train, inputs.poison_indices
    if train is None or indices is None or inputs.trigger is None:
        raise ConfigError(
            f"{run_dir}: its poisoned training set cannot be rebuilt (the run's partition does not give {RunDir.POISON_INDICES}; "
            "another perturbd version made it?)"
        )
    if train.images.dtype != torch.uint8:
        raise ConfigError(f"{run_dir}: the poisoned images are float and cannot be PNG files; export a quantized run")
    original = train.labels.clone()
    original[indices] = torch.tensor(RunDir(run_dir).poison_indices().original_labels, dtype=torch.long)
    folders = class_folders(train.classes)
    rows: list[tuple[str, int, int, int, str]] = []
    with atomic_dir(dest) as tmp:
        poisoned = torch.zeros(len(train), dtype=torch.bool)
        poisoned[indices] = True
        rows += write_split(tmp, "train", train, folders, original, poisoned)
        rows += write_split(tmp, "test", inputs.test, folders, inputs.test.labels, torch.zeros(len(inputs.test), dtype=torch.bool))
        (tmp / "manifest.csv").write_text(manifest_csv(rows))
        write_trigger_files(inputs.trigger, tmp, inputs.test.images)
    return Exported(dest, len(train), len(inputs.test), len(indices), folders)


def write_split(
    root: Path, split: str, data: ImageDataset, folders: tuple[str, ...], original: torch.Tensor, poisoned: torch.Tensor
) -> list[tuple[str, int, int, int, str]]:
    """Write ``data`` as ``root/split/<class>/<n>.png``; its manifest rows. Progress to the active
    monitor (:mod:`perturbd.progress`), a step per 512 images."""
    width = len(str(max(len(data) - 1, 0)))
    labels = data.labels.tolist()
    files = [f"{split}/{folders[label]}/{n:0{width}d}.png" for n, label in enumerate(labels)]
    for name in {folders[label] for label in labels}:
        (root / split / name).mkdir(parents=True)
    images = data.images.numpy()
    chunks = [range(i, min(i + 512, len(files))) for i in range(0, len(files), 512)]
    workers = max(1, min(8, os.cpu_count() or 1, len(chunks)))

    def write_part(part: range) -> None:
        for i in part:
            write_png(root / files[i], images[i])

    # Pillow's encoder releases the GIL; a step per chunk written
    with ThreadPoolExecutor(max_workers=workers) as pool, stage(f"export {split}", len(chunks)) as progress:
        list(progress.over(pool.map(write_part, chunks)))  # list(): wait, and raise the first error
    return [(f, lab, int(o), int(p), split) for f, lab, o, p in zip(files, labels, original.tolist(), poisoned.tolist())]


def write_png(path: Path, image: np.ndarray) -> None:
    """One ``(C, H, W)`` uint8 image as an 8-bit PNG: ``L`` for one channel, ``RGB`` for three."""
    pixels = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def manifest_csv(rows: list[tuple[str, int, int, int, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    writer.writerows(rows)
    return buf.getvalue()


def write_trigger_files(trigger: Trigger, folder: Path, images: torch.Tensor | None = None) -> None:
    """``trigger.npy`` (δ, float32, pixel units) and ``trigger.png`` (round(δ) + 128, clipped); for a
    non-additive trigger ``trigger.safetensors`` and the mean change it makes to ``images``."""
    if trigger.additive:
        np.save(folder / "trigger.npy", trigger.delta.numpy().astype(np.float32))
    else:
        trigger.save(folder / RunDir.TRIGGER)  # named as in a run folder
    shifted = (torch.round(trigger.preview(images)) + 128).clamp(0, 255).to(torch.uint8).numpy()
    write_png(folder / RunDir.TRIGGER_PNG, shifted)
