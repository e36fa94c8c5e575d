"""Bad values, where they enter (issue 39, "Values" and "Messages"): non-finite or out-of-range
numbers in a config, a mask or δ; a key named twice in a YAML file; test labels the training set
never has; and messages that say the right thing (ranges, big numbers, rich markup, animations).
CLI cases: one line, exit 2, no traceback, nothing written. API cases: perturbd's own error, one
line, the same words."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile import assert_api_error, assert_one_line_exit_2, run_case
from PIL import Image

import perturbd
import perturbd.models
import perturbd.triggers
from perturbd.config import load_config, read_yaml
from perturbd.errors import CheckpointError, ConfigError, PerturbdError

RUN = ["run", "--set", "data.train_limit=500", "--set", "data.test_limit=100", "--set", "train.epochs=1"]
RNG = np.random.default_rng(0)


def _npz(path: Path, **overrides: Any) -> Path:
    arrays = {
        "x_train": RNG.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": RNG.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": np.arange(20) % 4,
    }
    np.savez(path, **(arrays | overrides))
    return path


def _npy(path: Path, value: Any, dtype: Any = np.float64) -> Path:
    np.save(path, np.full((28, 28), value, dtype=dtype))
    return path


def _saved_trigger(tmp: Path, value: float) -> Path:
    from perturbd.triggers import Trigger

    path = tmp / "t.safetensors"
    Trigger(torch.full((1, 28, 28), value), "array").save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _gif(path: Path) -> Path:
    frames = [Image.fromarray(np.full((28, 28, 3), v, np.uint8)) for v in (0, 100, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def _gif_folder(root: Path) -> Path:
    for part in ("train", "test"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(root / part / cls / f"{i}.png")
    _gif(root / "train" / "a" / "anim.gif")
    return root


def _uint64_labels() -> np.ndarray:
    y = (np.arange(40) % 4).astype(np.uint64)
    y[0] = 2**63
    return y


def _image(kind: str) -> list[str]:
    return ["--set", "trigger.kind=image", "--set", f"trigger.path={kind}"]


CliCase = Callable[[Path], tuple[list[str], str]]

CLI_CASES: dict[str, CliCase] = {
    # non-finite numbers in a config
    "std inf": lambda t: ([*RUN, "--set", "model.std=[.inf]"], "model.std.0': Input should be a finite number"),
    "std inf as text": lambda t: ([*RUN, "--set", "model.std=[inf]"], "model.std.0': Input should be a finite number"),
    "mean nan": lambda t: ([*RUN, "--set", "model.mean=[.nan]"], "model.mean.0': Input should be a finite number"),
    "mean nan as text": lambda t: ([*RUN, "--set", "model.mean=[nan]"], "model.mean.0': Input should be a finite number"),
    "std zero": lambda t: ([*RUN, "--set", "model.std=[0]"], "model.std"),
    "input range inf": lambda t: ([*RUN, "--set", "model.input_range=[0, .inf]"], "model.input_range.1"),
    "rate nan": lambda t: ([*RUN, "--set", "poison.rate=.nan"], "poison.rate"),
    "learning rate inf": lambda t: ([*RUN, "--set", "train.lr=.inf"], "train.lr"),
    "amplitude nan": lambda t: ([*RUN, "--set", "trigger.amplitude=.nan"], "trigger.amplitude"),
    "defence parameter inf": lambda t: ([*RUN, "--set", "defenses=[{name: strip, params: {frr: .inf}}]"], "strip.frr"),
    # masks from a file
    "mask 1e30": lambda t: ([*RUN, *_image(str(_npy(t / "m.npy", 1e30)))], "δ is in pixel units, within [-255, 255]"),
    "mask 1e5": lambda t: ([*RUN, *_image(str(_npy(t / "m.npy", -1e5)))], "holds values up to 100000 in magnitude"),
    "mask nan": lambda t: ([*RUN, *_image(str(_npy(t / "m.npy", np.nan)))], "holds NaN or inf"),
    "saved trigger of 1e30": lambda t: ([*RUN, *_image(str(_saved_trigger(t, 1e30)))], "within [-255, 255]"),
    "three-frame gif as a mask": lambda t: ([*RUN, *_image(str(_gif(t / "m.gif")))], "holds 3 frames"),
    "three-frame gif as a blend image": lambda t: (
        [*RUN, "--set", "trigger.kind=blended", "--set", f"trigger.path={_gif(t / 'b.gif')}"],
        "holds 3 frames",
    ),
    "mask complex": lambda t: ([*RUN, *_image(str(_npy(t / "m.npy", 3 + 4j, np.complex128)))], "holds complex numbers"),
    # duplicate keys
    "duplicate key in a section": lambda t: (
        ["run", str(_write(t / "c.yaml", "poison:\n  rate: 0.1\n  rate: 0.2\n")), *RUN[1:]],
        "names the key 'rate' twice in one mapping (line 3); keep one of them",
    ),
    "duplicate section": lambda t: (
        ["run", str(_write(t / "c.yaml", "poison: {rate: 0.1}\ntrain: {epochs: 1}\npoison: {target: 2}\n")), *RUN[1:]],
        "names the key 'poison' twice",
    ),
    "duplicate key in a sweep": lambda t: (
        ["sweep", str(_write(t / "s.yaml", "base: {train: {epochs: 1}}\naxes: {poison.rate: [0.1]}\nseeds: [0]\nseeds: [1]\n"))],
        "names the key 'seeds' twice",
    ),
    "duplicate axis in a sweep": lambda t: (
        ["sweep", str(_write(t / "s.yaml", "base: {}\naxes:\n  poison.rate: [0.1]\n  poison.rate: [0.2]\nseeds: [0]\n"))],
        "names the key 'poison.rate' twice",
    ),
    "sweep range of NaN": lambda t: (
        ["sweep", str(_write(t / "s.yaml", "base: {}\naxes: {poison.rate: {range: [0.1, .nan, 0.1]}}\nseeds: [0]\n"))],
        "range takes finite numbers",
    ),
    "sweep linspace to inf": lambda t: (
        ["sweep", str(_write(t / "s.yaml", "base: {}\naxes: {poison.rate: {linspace: [0.1, .inf, 3]}}\nseeds: [0]\n"))],
        "linspace takes finite numbers",
    ),
    "sweep value inf": lambda t: (
        ["sweep", str(_write(t / "s.yaml", "base: {}\naxes: {poison.rate: [0.1, .inf]}\nseeds: [0]\n"))],
        "Input should be a finite number, got inf",
    ),
    # labels
    "test label never trained": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', y_train=np.arange(40) % 3)}"],
        "the test set has label(s) 3 that no training image has",
    ),
    # messages
    "uint64 label 2^63 printed as it is": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', y_train=_uint64_labels())}"],
        "holds label 9223372036854775808",
    ),
    "no fraction fits, not an inverted range": lambda t: (
        [*RUN, "--set", "data.train_limit=60", "--set", "attack.knowledge=model"],
        "use at least 100 training images",
    ),
    "update batch larger than the data, not a negative rest": lambda t: (
        [*RUN, "--set", "attack.setting=update", "--set", "attack.update_size=900"],
        "attack.update_size 900 is more than the victim's",
    ),
    "brackets in a message survive": lambda t: ([*RUN, "--set", f"data.name=npz:{t}/[tensorboard].npz"], "[tensorboard].npz"),
    "three-frame gif": lambda t: (
        [*RUN, "--set", f"data.name=imagefolder:{_gif_folder(t / 'f')}"],
        "anim.gif holds 3 frames (an animation or a multi-page file), not one image",
    ),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_bad_value_is_one_line_exit_2_nothing_written(name: str, cli, monkeypatch, tmp_path) -> None:
    out = run_case(cli, CLI_CASES[name], tmp_path, monkeypatch)
    assert not out.exists() or not any(out.iterdir()), "nothing written"


def test_the_install_hint_keeps_its_brackets(cli, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    code, _, err = cli(*RUN, "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "runs"))
    assert_one_line_exit_2(code, err, "pip install 'perturbd[tensorboard]'")


# --------------------------------------------------------------------------- the Python API

X = RNG.integers(0, 256, (40, 28, 28), dtype=np.uint8)
Y = np.arange(40) % 4

ApiCase = Callable[[], Any]

API_CASES: dict[str, tuple[ApiCase, type[PerturbdError], str]] = {
    "δ 1e5 (numpy)": (lambda: perturbd.poison(X, Y, np.full((28, 28), 1e5)), ConfigError, "within [-255, 255]"),
    "δ 1e5 (torch)": (lambda: perturbd.poison(X, Y, torch.full((28, 28), 1e5)), ConfigError, "within [-255, 255]"),
    "δ inf": (lambda: perturbd.poison(X, Y, np.full((28, 28), np.inf)), ConfigError, "holds NaN or inf"),
    "δ complex (numpy)": (lambda: perturbd.poison(X, Y, np.full((28, 28), 1 + 2j)), ConfigError, "complex"),
    "δ complex (torch)": (lambda: perturbd.poison(X, Y, torch.full((28, 28), 1 + 2j)), ConfigError, "complex"),
    "Trigger of complex δ": (lambda: perturbd.triggers.Trigger(torch.full((1, 28, 28), 1 + 2j), "x"), ConfigError, "real values"),
    "amplitude inf": (lambda: perturbd.poison(X, Y, "grid", amplitude=float("inf")), ConfigError, "finite number"),
    "rate nan": (lambda: perturbd.poison(X, Y, "grid", rate=float("nan")), ConfigError, "finite number"),
    "uint64 label 2^63": (lambda: perturbd.poison(X, _uint64_labels(), "grid"), ConfigError, "holds label 9223372036854775808"),
    "y of strings": (lambda: perturbd.poison(X, np.array(["a"] * 40), "grid"), ConfigError, "one integer label per image"),
    "x of objects": (lambda: perturbd.poison(X.astype(object), Y, "grid"), ConfigError, "x must hold uint8 pixels"),
    "seed nan": (
        lambda: perturbd.poison(X, Y, "grid", seed=float("nan")),
        ConfigError,
        "seed must be an integer in [0, 2^63 - 1], got nan",
    ),
    "Trigger of a numpy δ": (lambda: perturbd.triggers.Trigger(np.zeros((1, 28, 28)), "x"), ConfigError, "torch.as_tensor"),
    "run with a dict": (lambda: perturbd.run({"model": {"std": [1.0]}}), ConfigError, "cfg must be an ExperimentConfig"),
    "config std inf": (lambda: load_config(overrides=["model.std=[.inf]"]), ConfigError, "finite number"),
    "model input std zero": (
        lambda: perturbd.models.get_model("cnn28", (1, 28, 28), 10).set_input((0, 1), (0.5,), (0.0,)),
        ConfigError,
        "std > 0",
    ),
    "model input mean nan": (
        lambda: perturbd.models.get_model("cnn28", (1, 28, 28), 10).set_input((0, 1), (float("nan"),), (1.0,)),
        ConfigError,
        "must be finite",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_value_raises_perturbds_own_error(name: str) -> None:
    call, kind, message = API_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: refused, not silently cut
        assert_api_error(call, kind, message)


def test_a_checkpoint_with_a_non_finite_std_is_corrupt(tmp_path) -> None:
    from perturbd.models import get_model, save_model
    from perturbd.models.checkpoint import load_model_weights

    model = get_model("cnn28", (1, 28, 28), 10)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_model(model, tmp_path / "m.safetensors", {})

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
    meta["input"] = '{"input_range": [0, 1], "mean": [0.5], "std": [Infinity]}'
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="malformed metadata input"):
        load_model_weights(get_model("cnn28", (1, 28, 28), 10), path)


def test_duplicate_keys_refused_by_the_one_loader_merge_keys_kept(tmp_path) -> None:
    with pytest.raises(ConfigError, match="names the key 'a' twice in one mapping \\(line 2\\)"):
        read_yaml(_write(tmp_path / "d.yaml", "a: 1\na: 2\n"))
    # a merge key (<<) followed by an override is not a duplicate; nested mappings are checked too
    merged = read_yaml(_write(tmp_path / "m.yaml", "b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n"))
    assert merged["c"] == {"x": 3, "y": 2}
    with pytest.raises(ConfigError, match="'x' twice"):
        read_yaml(_write(tmp_path / "n.yaml", "c:\n  d: {x: 1, x: 2}\n"))


def test_a_train_limit_that_drops_a_test_class_is_a_stated_warning(caplog) -> None:
    from perturbd.config import DataConfig
    from perturbd.data import load_data

    classes = 4
    y_train = np.array([0] * 30 + [1] * 30 + [2] * 30 + [3] * 2)
    data = (RNG.integers(0, 256, (92, 28, 28), dtype=np.uint8), y_train, X[:20], np.arange(20) % classes)
    from perturbd.data.arrays import register_arrays

    name = register_arrays(data)
    with caplog.at_level("WARNING"):
        split = load_data(DataConfig(name=name, train_limit=10))
    assert 3 not in split.train.labels.tolist()
    assert "keeps no training image of test label(s) 3" in caplog.text


def test_valid_masks_and_values_still_work(tmp_path) -> None:
    from perturbd.triggers.base import add_delta

    ok = perturbd.poison(X, Y, np.full((28, 28), -255.0), rate=0.1)
    assert ok.x[ok.indices].max() == 0
    # δ beyond ±255 that reaches add_delta (a model-made trigger) saturates, never wraps
    images = torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)
    assert add_delta(images, torch.full((1, 2, 2), 1e5)).tolist() == [[[[255, 255], [255, 255]]]]
    assert add_delta(images, torch.full((1, 2, 2), -1e5)).tolist() == [[[[0, 0], [0, 0]]]]
    assert (
        perturbd.poison(X, Y, "grid", seed=np.int64(3), rate=0.1).indices.tolist()
        == perturbd.poison(X, Y, "grid", seed=3, rate=0.1).indices.tolist()
    )
    assert load_config(overrides=["model.std=[0.5]", "model.mean=[0.5]"]).model.std == [0.5]
