"""Export a run as an image folder and read it back: the same pixels, labels and, trained again, the same model."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from perturbd.config import DataConfig, load_config
from perturbd.data import load_data
from perturbd.data.dataset import ImageDataset
from perturbd.errors import ConfigError
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.models import get_model
from perturbd.runs.experiment import run
from perturbd.runs.export import class_folders, export_run, safe_name, write_split
from perturbd.runs.folder import RunDir
from perturbd.runs.saved import load_inputs
from perturbd.train import fit
from perturbd.triggers import Trigger


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny mnist5k run (grid c = 24, 10 % poison) and its export."""
    tmp = tmp_path_factory.mktemp("export")
    result = run(load_config(overrides=[*TINY, "train.threads=1"]), tmp / "runs")
    done = export_run(result.run_dir, tmp / "exported")
    assert done.folder == tmp / "exported" and (done.train, done.poisoned, done.test) == (800, 80, 300)
    return result.run_dir, done.folder


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _in_run_order(split, rows: list[dict[str, str]], name: str):
    """The read-back set (imagefolder order: label, then file name) put back in the run's order."""
    files = sorted((r for r in rows if r["split"] == name), key=lambda r: (int(r["label"]), r["file"]))
    order = torch.tensor([int(Path(r["file"]).stem) for r in files])
    data = split.train if name == "train" else split.test
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    return data.subset(back)


def test_read_back_gives_the_run_pixels_labels_and_poison(exported) -> None:
    run_dir, folder = exported
    inputs = load_inputs(run_dir)
    rows = _manifest(folder)
    split = load_data(DataConfig(name=f"imagefolder:{folder}"), 0)
    train, test = _in_run_order(split, rows, "train"), _in_run_order(split, rows, "test")
    assert torch.equal(train.images, inputs.train.images) and torch.equal(train.labels, inputs.train.labels)
    assert torch.equal(test.images, inputs.test.images) and torch.equal(test.labels, inputs.test.labels)
    assert split.train.classes == inputs.train.classes
    poisoned = [int(Path(r["file"]).stem) for r in rows if r["split"] == "train" and r["poisoned"] == "1"]
    assert sorted(poisoned) == inputs.poison_indices.tolist()
    originals = {int(Path(r["file"]).stem): int(r["original_label"]) for r in rows if r["split"] == "train" and r["poisoned"] == "1"}
    saved = dict(zip(inputs.poison_indices.tolist(), json.loads((run_dir / "poison_indices.json").read_text())["original_labels"]))
    assert originals == saved and all(int(r["label"]) == 0 for r in rows if r["poisoned"] == "1")
    assert all(r["original_label"] == r["label"] for r in rows if r["poisoned"] == "0")


def test_trigger_files(exported) -> None:
    run_dir, folder = exported
    delta = Trigger.load(run_dir / "trigger.safetensors").delta
    saved = np.load(folder / "trigger.npy")
    assert saved.dtype == np.float32 and saved.shape == tuple(delta.shape) and np.array_equal(saved, delta.numpy())
    png = np.asarray(Image.open(folder / "trigger.png"))
    assert Image.open(folder / "trigger.png").mode == "L"
    assert np.array_equal(png.astype(int) - 128, np.round(delta.numpy()[0]).astype(int)), "round(δ) + 128"
    assert Image.open(next((folder / "train").rglob("*.png"))).mode == "L"


@pytest.mark.slow
def test_training_on_the_export_gives_the_run_metrics(exported) -> None:
    """The victim architecture, trained with the run's seed and training config on the exported
    images (already poisoned: nothing more is poisoned), is the run's backdoored model."""
    run_dir, folder = exported
    cfg = load_config(run_dir / "config.yaml")
    split = load_data(DataConfig(name=f"imagefolder:{folder}"), cfg.seed)
    train = _in_run_order(split, _manifest(folder), "train")
    model = get_model(cfg.model.name, train.image_shape, train.num_classes, seed=cfg.seed)
    fit(model, train, cfg.train, cfg.seed)
    trigger = Trigger(torch.from_numpy(np.load(folder / "trigger.npy")), "image")
    metrics = RunDir(run_dir).metrics()
    assert clean_accuracy(model, split.test) == metrics.clean_accuracy
    assert attack_success_rate(model, split.test, trigger, cfg.poison.target) == metrics.attack_success_rate


def test_mistakes_write_nothing(exported, tmp_path) -> None:
    run_dir, folder = exported
    with pytest.raises(ConfigError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_run(run_dir, folder)
    for key, value in (("quantize", "false"), ("setting", "update")):
        fake = tmp_path / f"run-{key}"
        shutil.copytree(run_dir, fake)
        text = (fake / "config.yaml").read_text()
        (fake / "config.yaml").write_text(re.sub(rf"(\n  {key}:) \S+", rf"\1 {value}", text, count=1))
        with pytest.raises(ConfigError, match="quantize=false" if key == "quantize" else "setting=update"):
            export_run(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_folders_sort_in_label_order() -> None:
    assert class_folders(("0", "1", "2")) == ("0", "1", "2")
    assert class_folders(("airplane", "bird", "cat")) == ("airplane", "bird", "cat")
    assert class_folders(("zebra", "ant")) == ("0_zebra", "1_ant")
    assert class_folders(tuple(str(i) for i in range(12)))[10] == "10_10"
    assert class_folders(("a/b", "a:b")) == ("0_a_b", "1_a_b"), "names that collide once made safe"
    assert safe_name("../x") == "_x" and safe_name("...") == "class" and safe_name("speed limit 30") == "speed limit 30"


def test_colour_images_are_rgb_and_read_back(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(
        torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=gen), torch.tensor([1, 0, 1, 0, 0, 1]), ("zebra", "ant")
    )
    folders = class_folders(data.classes)
    for split in ("train", "test"):
        write_split(tmp_path, split, data, folders, data.labels, torch.zeros(6, dtype=torch.bool))
    assert Image.open(tmp_path / "train" / "1_ant" / "0.png").mode == "RGB"
    back = load_data(DataConfig(name=f"imagefolder:{tmp_path}"), 0).train
    assert torch.equal(back.labels, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(back.images, data.images[torch.tensor([1, 3, 4, 0, 2, 5])])


def test_a_non_additive_run_exports_its_trigger_file_and_its_pixels(synthetic_overrides, tmp_path) -> None:
    result = run(
        load_config(
            overrides=[
                *synthetic_overrides,
                "data.train_limit=300",
                "data.test_limit=60",
                "trigger.kind=wanet",
                "trigger.grid_k=3",
                "poison.rate=0.05",
            ]
        ),
        tmp_path / "runs",
    )
    done = export_run(result.run_dir, tmp_path / "exported")
    assert not (done.folder / "trigger.npy").exists() and (done.folder / "trigger.png").is_file()
    back = Trigger.load(done.folder / "trigger.safetensors")
    original = Trigger.load(result.run_dir / "trigger.safetensors")
    assert type(back) is type(original) and torch.equal(back.delta, original.delta) and back.noise_ratio == original.noise_ratio
    inputs = load_inputs(result.run_dir)
    rows = [r for r in _manifest(done.folder) if r["split"] == "train" and r["poisoned"] == "1"]
    assert len(rows) == done.poisoned == 12
    first = rows[0]
    pixels = np.asarray(Image.open(done.folder / first["file"]))
    assert np.array_equal(pixels, inputs.train.images[int(Path(first["file"]).stem)].numpy().squeeze(0))


def test_a_long_class_name_fits_a_folder_name() -> None:
    assert len(safe_name("c" * 1000)) <= 200
