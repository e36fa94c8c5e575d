"""``perturbd scan``: exit 1 on the planted backdoor and 0 on its clean twin, saved as a state
dict (``--arch``) and as TorchScript, with no data (MM-BD alone); with data, Neural Cleanse beside
it and ``--fail-on``; every mistake and hostile file one line, exit 2, nothing written."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from hostile import Touch, assert_one_line_exit_2, run_case

from perturbd.models import get_model, save_model

ARCH = "factory:planted:TinyNet"  # the planted models' class (tests/planted.py), named by the user
SHAPE = ["--image-shape", "1,28,28", "--num-classes", "10"]
# 40 steps from 8 starts (tests/defenses/test_mm_bd.py: the target's p-value below 1e-6, the clean
# twin's smallest above 0.05)
CHEAP = ["-p", "mm_bd.steps=40", "-p", "mm_bd.starts=8"]


@pytest.fixture(scope="module")
def files(planted, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The planted backdoored model and its clean twin as state dicts and TorchScript files."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, model in (("bad", planted.model), ("good", planted.clean_model)):
        model.eval()
        torch.save(model.state_dict(), folder / f"{name}.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.rand(2, 1, 28, 28))
            torch.jit.save(traced, str(folder / f"{name}_script.pt"))
        out[name], out[f"{name}_script"] = folder / f"{name}.pt", folder / f"{name}_script.pt"
    return out


@pytest.mark.parametrize("form", ["state_dict", "torchscript"])
def test_flags_the_backdoored_model_and_passes_its_clean_twin(form: str, files, cli, tmp_path) -> None:
    for name, code in (("bad", 1), ("good", 0)):
        path = files[name] if form == "state_dict" else files[f"{name}_script"]
        arch = ["--arch", ARCH] if form == "state_dict" else []
        out = tmp_path / name
        got, stdout, err = cli("scan", str(path), *arch, *SHAPE, *CHEAP, "--out", str(out))
        assert got == code, err + stdout
        result = json.loads((out / "scan.json").read_text())
        assert result["exit_code"] == code and result["verdict"] == ("flagged" if code else "clean")
        (det,) = result["detectors"]
        assert det["name"] == "mm_bd" and det["clean_images_used"] == 0
        assert det["flagged_labels"] == ([0] if code else [])
        assert len(det["labels"]) == 10 and {"label", "score", "flagged", "max_margin", "p_value"} <= set(det["labels"][0])
        assert all((out / f).stat().st_size > 0 for f in det["figures"])
        page = (out / "scan.html").read_text()
        assert "data:image/png;base64," in page and ("flagged" if code else "clean") in page
        assert ("FLAGGED" in stdout) == bool(code)


def test_with_data_neural_cleanse_joins_and_fail_on_counts_detectors(files, cli, tmp_path) -> None:
    # Neural Cleanse for 2 epochs reverse-engineers too little to flag anything: one detector of two flags
    nc = ["-p", "neural_cleanse.epochs=2", "-p", "neural_cleanse.n_clean=40", "-p", "neural_cleanse.batch_size=8"]
    args = ["scan", str(files["bad"]), "--arch", ARCH, "--data", "synthetic", *CHEAP, *nc]
    code, _, err = cli(*args, "--out", str(tmp_path / "one"))
    result = json.loads((tmp_path / "one" / "scan.json").read_text())
    assert [d["name"] for d in result["detectors"]] == ["mm_bd", "neural_cleanse"]
    nc_result = result["detectors"][1]
    assert nc_result["clean_images_used"] == 40 and "mask_l1" in nc_result["labels"][0]
    assert "neural_cleanse_trigger.png" in nc_result["figures"]
    flagging = result["flagging_detectors"]
    assert "mm_bd" in flagging and code == 1, err
    code2, _, err2 = cli(*args, "--fail-on", "2", "--out", str(tmp_path / "two"))
    assert code2 == (1 if len(flagging) >= 2 else 0), err2
    assert json.loads((tmp_path / "two" / "scan.json").read_text())["fail_on"] == 2


def test_an_earlier_scan_folder_is_replaced_whole(files, cli, tmp_path) -> None:
    out = tmp_path / "scan"
    out.mkdir()
    (out / "scan.json").write_text("{}")
    (out / "stale.png").write_bytes(b"x")
    code, _, err = cli(
        "scan", str(files["good"]), "--arch", ARCH, *SHAPE, "-d", "mm_bd", "-p", "steps=2", "-p", "starts=2", "--out", str(out)
    )
    assert code in (0, 1), err
    assert not (out / "stale.png").exists() and json.loads((out / "scan.json").read_text())["detectors"]


def _pickle(t: Path) -> Path:
    path = t / "weights.pt"
    path.write_bytes(pickle.dumps({"fc.weight": Touch(t / "hacked")}))
    return path


def _case(files: dict[str, Path], name: str):  # type: ignore[no-untyped-def]
    bad = str(files["bad"])
    return {
        "missing file": lambda t: (["scan", str(t / "none.pt"), "--arch", ARCH, *SHAPE], "model not found"),
        "a pickle that would run code": lambda t: (["scan", str(_pickle(t)), "--arch", ARCH, *SHAPE], "weights.pt"),
        "wrong --arch": lambda t: (["scan", bad, "--arch", "cnn28", *SHAPE], bad),
        "state dict without --arch": lambda t: (["scan", bad, *SHAPE], "--arch"),
        "no shape without data": lambda t: (["scan", bad, "--arch", ARCH], "--image-shape C,H,W --num-classes K"),
        "bad --image-shape": lambda t: (["scan", bad, "--arch", ARCH, "--image-shape", "28x28", "--num-classes", "10"], "C,H,W"),
        "an input detector": lambda t: (["scan", bad, "--arch", ARCH, *SHAPE, "-d", "strip"], "'strip' is a input defence"),
        "unknown detector": lambda t: (["scan", bad, "--arch", ARCH, *SHAPE, "-d", "mm_db"], "did you mean 'mm_bd'"),
        "neural cleanse without data": lambda t: (["scan", bad, "--arch", ARCH, *SHAPE, "-d", "neural_cleanse"], "--data"),
        "fail-on above the detectors": lambda t: (["scan", bad, "--arch", ARCH, *SHAPE, "--fail-on", "2"], "--fail-on must be in [1, 1]"),
        "bad parameter": lambda t: (["scan", bad, "--arch", ARCH, *SHAPE, "-p", "mm_bd.steps=0"], "mm_bd.steps"),
    }[name]


CASES = [
    "missing file", "a pickle that would run code", "wrong --arch", "state dict without --arch", "no shape without data",
    "bad --image-shape", "an input detector", "unknown detector", "neural cleanse without data", "fail-on above the detectors",
    "bad parameter",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_mistakes_are_one_line_exit_2_nothing_written(name: str, files, cli, tmp_path, monkeypatch) -> None:
    out = run_case(cli, _case(files, name), tmp_path, monkeypatch)
    assert not out.exists(), "nothing written in --out"
    assert not (tmp_path / "inputs" / "hacked").exists(), "the pickle did not run"


def test_an_occupied_out_folder_is_refused(files, cli, tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    code, _, err = cli("scan", str(files["bad"]), "--arch", ARCH, *SHAPE, "--out", str(tmp_path))
    assert_one_line_exit_2(code, err, "neither empty nor an earlier scan's folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_run_directory_brings_its_data_and_seed(run_dir, cli, tmp_path) -> None:
    out = tmp_path / "scan"
    code, _, err = cli("scan", str(run_dir), "-d", "mm_bd", "-p", "steps=3", "-p", "starts=2", "--out", str(out))
    assert code in (0, 1), err
    result = json.loads((out / "scan.json").read_text())
    assert result["exit_code"] == code and result["image_shape"] == [1, 28, 28] and result["num_classes"] == 10
    assert result["detectors"][0]["params"]["seed"] is not None, "the unset seed derived from the run's"
    code, _, err = cli("scan", str(run_dir), "-d", "mm_bd", *SHAPE, "--out", str(tmp_path / "other"))
    assert_one_line_exit_2(code, err, "the data set gives them")


def test_a_perturbd_checkpoint_states_its_own_shape(cli, tmp_path) -> None:
    path = save_model(get_model("cnn28", (1, 28, 28), 10, seed=0), tmp_path / "model.safetensors", {})
    code, _, err = cli("scan", str(path), "-p", "mm_bd.steps=2", "-p", "mm_bd.starts=2", "--out", str(tmp_path / "scan"))
    assert code in (0, 1), err
    result = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert result["image_shape"] == [1, 28, 28] and len(result["detectors"][0]["labels"]) == 10
