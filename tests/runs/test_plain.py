"""``perturbd train``: the export round trip from the command line (export a run's poisoned set,
train a plain model on the files with the run's config, measure the run's trigger) gives the
run's own numbers; a folder without the poisoned files gives the clean model's kind; any folder
in its own order gives the run's kind; every mistake one line, exit 2."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import TINY_RUN

from perturbd.config import load_config
from perturbd.runs.experiment import run
from perturbd.runs.export import export_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run (synthetic bars, 3×3 white patch, 5 % poison, 3 epochs: ASR about 90 %) and its export."""
    result = run(load_config(overrides=[*TINY_RUN, "train.epochs=3"]), tmp_path_factory.mktemp("runs"))
    dest = tmp_path_factory.mktemp("export") / "data"
    export_run(result.run_dir, dest)
    return result, dest


def _record(folder) -> dict:
    return json.loads((folder / "train.json").read_text())


def test_the_round_trip_gives_the_runs_numbers(cli, exported, tmp_path) -> None:
    result, dest = exported
    m = result.metrics
    code, out, err = cli("train", str(dest), "-c", str(result.run_dir), "--trigger", str(dest / "trigger.npy"), "-o", str(tmp_path / "t"))
    assert code == 0, err
    rec = _record(tmp_path / "t")
    assert (rec["train_images"], rec["test_images"], rec["target"]) == (m.poison_set_size, m.test_size, m.target), "nothing held out"
    assert rec["train_order"] == "manifest", "the export's images in the run's order: the run's backdoored model"
    assert (rec["attack_success_rate"], rec["clean_accuracy"]) == (m.attack_success_rate, m.clean_accuracy), rec
    assert m.attack_success_rate > 0.8
    assert "clean accuracy" in out and "ASR → label 0" in out
    assert (tmp_path / "t" / "model.safetensors").is_file()


def test_without_the_poisoned_files_the_trigger_does_nothing(cli, exported, tmp_path) -> None:
    """The same trigger on a model trained on the export's untouched images only: the clean
    model's ASR (the run's clean twin's, give or take the images removed)."""
    result, dest = exported
    clean = shutil.copytree(dest, tmp_path / "clean")
    with (dest / "manifest.csv").open() as fh:
        poisoned = [row["file"] for row in csv.DictReader(fh) if row["poisoned"] == "1"]
    for name in poisoned:
        (clean / name).unlink()
    code, _, err = cli("train", str(clean), "-c", str(result.run_dir), "--trigger", str(dest / "trigger.npy"), "-o", str(tmp_path / "t"))
    assert code == 0, err
    rec = _record(tmp_path / "t")
    assert rec["train_images"] == result.metrics.poison_set_size - len(poisoned) and rec["train_order"] == "folder"
    assert rec["attack_success_rate"] < 0.2 and result.metrics.clean_model_asr < 0.2, rec


def test_a_run_trigger_file_and_an_explicit_target(cli, exported, tmp_path) -> None:
    """Without a config: the target given, the training set by hand (as the run's), the run's own
    .safetensors trigger; the export is still trained in the run's order."""
    result, dest = exported
    sets = [f"--set={s}" for s in ("train.epochs=3", "train.batch_size=50", "train.device=cpu", "train.threads=1")]
    trigger = str(result.run_dir / "trigger.safetensors")
    code, _, err = cli("train", str(dest), "--trigger", trigger, "--target", "0", *sets, "-o", str(tmp_path / "t"))
    assert code == 0, err
    rec = _record(tmp_path / "t")
    assert rec["train_order"] == "manifest" and rec["attack_success_rate"] == result.metrics.attack_success_rate > 0.8, rec


@pytest.mark.parametrize("case", ["no target", "png trigger", "out not empty", "wrong shape", "target too large", "no data"])
def test_mistakes_exit_2_and_write_nothing(cli, exported, tmp_path, case) -> None:
    result, dest = exported
    out = tmp_path / "t"
    args = ["train", str(dest), "-c", str(result.run_dir), "--trigger", str(dest / "trigger.npy"), "-o", str(out)]
    if case == "no target":
        args = ["train", str(dest), "--trigger", str(dest / "trigger.npy"), "-o", str(out)]
    elif case == "png trigger":
        args[5] = str(dest / "trigger.png")
    elif case == "out not empty":
        out.mkdir()
        (out / "mine.txt").write_text("mine")
    elif case == "wrong shape":
        import numpy as np

        np.save(tmp_path / "small.npy", np.ones((3, 8, 8), dtype=np.float32))
        args[5] = str(tmp_path / "small.npy")
    elif case == "target too large":
        args += ["--target", "99"]
    else:
        args[1] = str(tmp_path / "nothing-here")
    code, _, err = cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() or [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_run_without_poison_names_the_command_that_trains_without(cli) -> None:
    code, out, err = cli("run", "--set", "poison.rate=0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out, err
    assert "poison.rate must be above 0" in err and "perturbd train FOLDER --trigger FILE --target T" in err
