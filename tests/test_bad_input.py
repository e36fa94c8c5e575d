"""The bad-input suite: one table of user mistakes across config, CLI, data, triggers,
checkpoints and sweeps. Each must end in one line naming the problem, exit code 2, nothing
partial on disk, and no other run harmed.

The hostile and careless inputs of issue 39 are one table in five files, each case held to the
one harness of ``tests/hostile.py`` (CLI: one line, exit 2, no traceback; API: perturbd's own
error type, one line) and to its file's "nothing written" check:

- ``tests/test_bad_input.py`` (this file; nothing partial in ``--out``, an earlier run unharmed):
  config and CLI values (unknown keys and sections, out-of-range rates, amplitudes, seeds and
  epochs, a ``--set`` without a value, YAML not a mapping or not YAML, targets and sources);
  unknown names (data set, model, trigger, defence); data files (missing, npz keys, NaN, range,
  one class, empty, a target without images; image folders corrupt, of mixed sizes, unnamed);
  trigger files (mask missing, of another size, not an image; a patch too large); checkpoints
  (another architecture, truncated, a pickle); models perturbd did not build (weights missing or a
  pickle, a head of another class count, TorchScript missing, of another shape or class count,
  or given as weights, an unknown feature layer, a factory that does not import, a mean of
  another channel count; ``defend``/``audit`` of such models); sweep files (an unknown axis key,
  a bad axis value, not a mapping).
- ``tests/test_bad_values.py`` (``--out`` absent or empty): values and messages: non-finite
  numbers in a config (mean, std, input range, rate, learning rate, amplitude, a defence
  parameter); masks and δ out of range, NaN, complex, or of several frames (mask, blend image,
  image folder); a key named twice in a config or a sweep; non-finite sweep ranges and values;
  test labels no training image has; messages that say the right thing (big numbers, brackets,
  no inverted range or negative rest); the API (``perturbd.poison``, ``Trigger``, ``run``, ``load_config``,
  ``set_input``) refusing such values with ``ConfigError``.
- ``tests/test_bad_sizes.py`` (no ``--out``, nothing beside the inputs): resources bounded before
  anything is allocated: class counts and targets, threads, seeds (0 ≤ seed < 2^63), the size of
  an expanded sweep (seed counts, ranges, linspaces, grids above ``max_runs``), image pixel
  counts read from PNG, TIFF and npy headers (image folders, masks, blend images); the API
  (``poison``, ``get_model``, ``build_from_checkpoint``, ``load_config``, ``axis_values``,
  ``read_sweep``, ``load_inputs``) refusing them with its own error.
- ``tests/runs/test_paths.py`` (the whole temporary folder unchanged, answered before training):
  output locations (``--out``, the sweep's ``out:``, ``-o``, ``--to``) that are files, below a
  file, too long a name, an unwritable format, or inside the run; a truncated
  ``poison_indices.json``; errors of the operating system (no space, read-only, permission
  denied) with nothing half written; two processes making one run (the run lock).
- ``tests/runs/test_trust.py`` (no output folder made; the named code did not run: ``os.abort``
  and ``torch.jit.load`` recorded, ``helper.py`` not imported): a received run folder or
  checkpoint naming code (``factory:``, ``torchscript:``, a surrogate) refused by ``defend``,
  ``audit``, ``export``, ``reproduce`` and the Python API unless ``--trust-code`` or ``--arch``;
  a run folder cannot trust itself; ``report`` builds no model.

Run names that would write outside ``--out`` are refused in ``tests/test_config.py``
(``test_a_run_name_is_one_folder_name``)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile import run_case
from PIL import Image


def _npz(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_test": np.arange(20) % 4,
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _folder(root: Path, corrupt: bool = False, mixed: bool = False) -> Path:
    for part in ("train", "test"):
        for cls in ("a", "b"):
            d = root / part / cls
            d.mkdir(parents=True)
            for i in range(3):
                size = (20, 20) if mixed and part == "train" and cls == "b" and i == 0 else (16, 16)
                Image.fromarray(np.full(size, 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _checkpoint(tmp: Path, kind: str) -> Path:
    from perturbd.models import get_model, save_model

    path = tmp / f"{kind}.safetensors"
    if kind == "other_arch":
        save_model(get_model("lenet5", (1, 28, 28), 10), path, {})
    elif kind == "truncated":
        save_model(get_model("cnn28", (1, 28, 28), 10), path, {})
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickle":
        path = tmp / "weights.pt"
        path.write_bytes(pickle.dumps({"__reduce__": "os.system"}))
    return path


def _script(tmp: Path, kind: str) -> Path:
    """A TorchScript file perturbd did not make: ``ten`` fits 1×28×28 images of 10 classes, ``seven``
    gives 7 logits, ``rgb32`` takes 3×32×32 images."""
    from external_models import script
    from torch import nn

    inputs = {"ten": (784, 10), "seven": (784, 7), "rgb32": (3 * 32 * 32, 10)}[kind]
    return script(nn.Sequential(nn.Flatten(), nn.Linear(*inputs)), tmp / f"{kind}.pt")


def _state_dict(tmp: Path, classes: int = 10) -> Path:
    """A plain cnn28 state dict (``torch.save``) for ``classes`` classes."""
    import torch

    from perturbd.models import get_model

    torch.save(get_model("cnn28", (1, 28, 28), classes).state_dict(), tmp / "state.pt")
    return tmp / "state.pt"


def _sweep(tmp: Path, body: str) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(body)
    return path


RUN = ["run", "--set", "data.train_limit=500", "--set", "data.test_limit=100", "--set", "train.epochs=1"]
Case = Callable[[Path], tuple[list[str], str]]

CASES: dict[str, Case] = {
    # config and CLI
    "unknown key": lambda t: ([*RUN, "--set", "poison.rat=0.1"], "did you mean 'rate'"),
    "unknown section": lambda t: ([*RUN, "--set", "posion.rate=0.1"], "did you mean 'poison'"),
    "rate above 1": lambda t: ([*RUN, "--set", "poison.rate=1.5"], "poison.rate"),
    "rate zero": lambda t: ([*RUN, "--set", "poison.rate=0"], "poison.rate"),
    "rate of a string": lambda t: ([*RUN, "--set", "poison.rate=lots"], "poison.rate"),
    "negative amplitude": lambda t: ([*RUN, "--set", "trigger.amplitude=-1"], "trigger.amplitude"),
    "absurd amplitude": lambda t: ([*RUN, "--set", "trigger.amplitude=1e6"], "trigger.amplitude"),
    "negative seed": lambda t: ([*RUN, "--set", "seed=-1"], "config 'seed'"),
    "epochs zero": lambda t: ([*RUN, "--set", "train.epochs=0"], "train.epochs"),
    "unknown optimizer": lambda t: ([*RUN, "--set", "train.optimizer=rmsprop"], "train.optimizer"),
    "set without value": lambda t: ([*RUN, "--set", "poison.rate"], "section.key=value"),
    "yaml list": lambda t: ([*RUN[:1], str(_write(t / "c.yaml", "[1, 2]")), *RUN[1:]], "YAML mapping"),
    "yaml syntax": lambda t: ([*RUN[:1], str(_write(t / "c.yaml", "data: {name: [")), *RUN[1:]], "not valid YAML"),
    "target out of range": lambda t: ([*RUN, "--set", "poison.target=10"], "poison.target must be in [0, 9], got 10"),
    "sources only target": lambda t: ([*RUN, "--set", "poison.sources=[0]"], "no class other than the target"),
    "rate too small": lambda t: ([*RUN, "--set", "poison.rate=0.0001"], "poisons no image"),
    # names
    "unknown data set": lambda t: ([*RUN, "--set", "data.name=mnsit"], "did you mean 'mnist'"),
    "unknown model": lambda t: ([*RUN, "--set", "model.name=lenet"], "did you mean 'lenet5'"),
    "unknown trigger": lambda t: ([*RUN, "--set", "trigger.kind=gird"], "did you mean 'grid'"),
    "unknown defense": lambda t: ([*RUN, "--set", "defenses=[strp]"], "did you mean 'strip'"),
    # data
    "data not found": lambda t: ([*RUN, "--set", "data.name=mnist", "--set", f"data.root={t}/none"], "data.download=true"),
    "npz missing": lambda t: ([*RUN, "--set", f"data.name=npz:{t}/no.npz"], "no.npz"),
    "npz missing key": lambda t: ([*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', y_test=None)}"], "y_test"),
    "npz NaN": lambda t: ([*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', x_train=np.full((40, 28, 28), np.nan))}"], "NaN"),
    "npz out of range": lambda t: ([*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', x_test=np.full((20, 28, 28), 2.5))}"], "x_test"),
    "npz one class": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', y_train=np.zeros(40, int), y_test=np.zeros(20, int))}"],
        "at least 2 classes",
    ),
    "npz empty": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, int))}"],
        "x_train",
    ),
    "npz target without images": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', y_test=np.zeros(20, int))}"],
        "target class 0",
    ),
    "imagefolder corrupt file": lambda t: ([*RUN, "--set", f"data.name=imagefolder:{_folder(t / 'f', corrupt=True)}"], "1.png"),
    "imagefolder mixed sizes": lambda t: ([*RUN, "--set", f"data.name=imagefolder:{_folder(t / 'f', mixed=True)}"], "0.png"),
    "imagefolder without path": lambda t: ([*RUN, "--set", "data.name=imagefolder"], "imagefolder:PATH"),
    # triggers
    "mask missing": lambda t: ([*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={t}/m.png"], "not found"),
    "mask wrong size": lambda t: (
        [*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={_png(t / 'm.png', 32)}"],
        "resize the mask to 28×28",
    ),
    "mask not an image": lambda t: (
        [*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={_write(t / 'm.png', 'hello')}"],
        "cannot read mask",
    ),
    "image kind without path": lambda t: ([*RUN, "--set", "trigger.kind=image"], "trigger.path"),
    "patch too large": lambda t: ([*RUN, "--set", "trigger.kind=patch", "--set", "trigger.size=40"], "does not fit"),
    # checkpoints
    "checkpoint of another architecture": lambda t: (
        [
            *RUN,
            "--set",
            "attack.setting=update",
            "--set",
            "attack.update_size=100",
            "--set",
            f"attack.checkpoint={_checkpoint(t, 'other_arch')}",
        ],
        "lenet5",
    ),
    "truncated safetensors": lambda t: (
        [
            *RUN,
            "--set",
            "attack.setting=update",
            "--set",
            "attack.update_size=100",
            "--set",
            f"attack.checkpoint={_checkpoint(t, 'truncated')}",
        ],
        "truncated",
    ),
    "pickle where weights are expected": lambda t: (
        [
            *RUN,
            "--set",
            "attack.setting=update",
            "--set",
            "attack.update_size=100",
            "--set",
            f"attack.checkpoint={_checkpoint(t, 'pickle')}",
        ],
        "weights.pt",
    ),
    # models perturbd did not build
    "model weights missing": lambda t: ([*RUN, "--set", f"model.weights={t}/none.pt"], "model.weights not found"),
    "model weights a pickle": lambda t: ([*RUN, "--set", f"model.weights={_checkpoint(t, 'pickle')}"], "weights.pt is a pickle"),
    "pretrained head of another class count": lambda t: (
        [*RUN, "--set", f"model.weights={_state_dict(t, 5)}"],
        "set model.replace_head=true",
    ),
    "torchscript missing": lambda t: ([*RUN, "--set", f"model.name=torchscript:{t}/none.pt"], "TorchScript file not found"),
    "torchscript of another input shape": lambda t: (
        [*RUN, "--set", f"model.name=torchscript:{_script(t, 'rgb32')}"],
        "cannot take images of shape 1x28x28",
    ),
    "torchscript of another class count": lambda t: (
        [*RUN, "--set", f"model.name=torchscript:{_script(t, 'seven')}"],
        "gives 7 logits but the data has 10 classes",
    ),
    "state dict named as torchscript": lambda t: ([*RUN, "--set", f"model.name=torchscript:{_state_dict(t)}"], "not a TorchScript file"),
    "torchscript given as weights": lambda t: (
        [*RUN, "--set", f"model.weights={_script(t, 'ten')}"],
        "is a TorchScript file, not a state dict",
    ),
    "torchscript with weights": lambda t: (
        [*RUN, "--set", f"model.name=torchscript:{_script(t, 'ten')}", "--set", f"model.weights={_state_dict(t)}"],
        "holds its own weights",
    ),
    "unknown feature layer": lambda t: ([*RUN, "--set", "model.features=layer4"], "has no layer 'layer4'; its layers: 0, 1, 2"),
    "factory not importable": lambda t: ([*RUN, "--set", "model.name=factory:no_such_module:make"], "cannot import 'no_such_module'"),
    "mean of another channel count": lambda t: ([*RUN, "--set", "model.mean=[0.1, 0.2]"], "model.mean has 2 values"),
    "defend a state dict without --arch": lambda t: (
        ["defend", str(_state_dict(t)), "--data", "mnist5k", "-d", "spectral_signature"],
        "name the architecture with --arch",
    ),
    "defend a pickle": lambda t: (
        ["defend", str(_checkpoint(t, "pickle")), "--arch", "cnn28", "--data", "mnist5k", "-d", "spectral_signature"],
        "weights.pt is a pickle",
    ),
    "defend at an unknown layer": lambda t: (
        ["defend", str(_script(t, "ten")), "--data", "mnist5k", "--features", "fc", "-d", "spectral_signature"],
        "has no layer 'fc'; its layers: 0, 1",
    ),
    "defend a model of another class count": lambda t: (
        ["defend", str(_script(t, "seven")), "--data", "mnist5k", "-d", "spectral_signature"],
        "gives 7 logits",
    ),
    "audit a model of another input shape": lambda t: (
        ["audit", str(_script(t, "rgb32")), str(_script(t, "rgb32")), "--data", "mnist5k"],
        "cannot take images of shape 1x28x28",
    ),
    # sweeps
    "sweep axis over unknown key": lambda t: (
        ["sweep", str(_sweep(t, "base: {train: {epochs: 1}}\naxes: {poison.rat: [0.1]}\nseeds: [0]\n"))],
        "poison.rat",
    ),
    "sweep axis bad value": lambda t: (
        ["sweep", str(_sweep(t, "base: {train: {epochs: 1}}\naxes: {poison.rate: [0.1, 7]}\nseeds: [0]\n"))],
        "poison.rate",
    ),
    "sweep file not a mapping": lambda t: (["sweep", str(_sweep(t, "- 1\n"))], "mapping"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_on_disk(name: str, cli, monkeypatch, tmp_path) -> None:
    # a finished run that must not be harmed
    done = tmp_path / "runs" / "earlier-run-00000000"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    out = run_case(cli, CASES[name], tmp_path, monkeypatch)
    assert sorted(p.name for p in out.iterdir()) == ["earlier-run-00000000"], "nothing partial, nothing harmed"
    assert (done / "metrics.json").read_text() == "{}"


def test_the_suite_is_large() -> None:
    assert len(CASES) >= 30
