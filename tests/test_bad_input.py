"""The bad-input suite: one table of user mistakes across config, CLI, data, triggers,
checkpoints and sweeps. Each must end in one line naming the problem, exit code 2, nothing
partial on disk, and no other run harmed.

Issue 39's classes, each with the test that holds it. Every case is held to the one harness of
``tests/hostile.py`` (CLI: one line, exit 2, no traceback; API: perturbd's own error type, one
line) and to its file's "nothing written" check. Files: ``bad_input`` = this file (nothing in
``--out`` but an earlier run, unharmed), ``values`` = ``tests/test_bad_values.py``, ``sizes`` =
``tests/test_bad_sizes.py`` (nothing beside the inputs), ``paths`` = ``tests/runs/test_paths.py``
(the whole temporary folder unchanged, answered before training), ``trust`` =
``tests/runs/test_trust.py`` (no output folder; ``os.abort`` and ``torch.jit.load`` recorded,
``helper.py`` not imported), ``markup`` = ``tests/cli/test_markup.py``. Rows name the table rows
(``"row"``) or the tests (``test_…``).

=====  ======================================================  ===============================================================
 #     class of the issue (new)                                tests
=====  ======================================================  ===============================================================
 S1    a received run folder names code: ``factory:os:abort``  trust ``test_a_run_folder_naming_code_is_refused_in_one_line``
                                                               (defend, audit, export, reproduce), ``test_the_python_api_…``
 S2    ``factory:helper:make`` imports helper.py from cwd      trust, the same tests (case "helper.py in the current folder")
 S3    every other place a file names code: torchscript:,      trust (cases "torchscript file", "surrogate"),
       ``attack.surrogate``, checkpoint metadata, a run folder  ``test_a_checkpoint_naming_code_is_refused_by_the_cli`` and
       that trusts itself                                       ``…_unless_trusted``, ``test_a_run_folder_cannot_trust_itself``
 S4    nothing written outside ``--out``: run names, export    bad_input "run name escaping --out", "run name absolute";
       class folders, names from data                          ``tests/test_config.py::test_a_run_name_is_one_folder_name``;
                                                               ``tests/runs/test_export.py::test_class_folders_sort_in_…``
 R1    class counts and labels from files                      sizes "npz label of 10^9", "…2^62", "checkpoint of 10^9
                                                               classes", API "poison a label of 10**9", "get_model 10**9 …"
 R2    targets (``poison.target``, ``poison(target=…)``)       sizes "target of 10^9", API "poison target=10**9"
 R3    seeds (0 ≤ seed < 2^63)                                 sizes "seed of 10^30", "seed of 2^63", "sweep seed of 2^63",
                                                               API "poison seed=…", "get_model seed=…", "load_inputs seed=…"
 R4    the size of an expanded sweep                           sizes "sweep seeds 10^12", "…range of step 1e-7", "…linspace of
                                                               10^12", "…grid above max_runs", "…above --max-runs", API
 R5    image pixel counts read from the header                 sizes "imagefolder 30000² PNG/TIFF", "…9000² PNG", "mask …",
                                                               "npy mask …", "blend image 30000² TIFF"
 R7    (found here) npz arrays whose header declares more     sizes "npz header of 10^12 images" (713 TiB: a MemoryError
       than the file holds or the machine's memory              traceback before), "npz header larger than its data"
 P1    every output location checked before training, its      paths ``test_output_mistake_is_one_line_exit_2_before_work``
       name and format (``--out``, ``--to``, ``-o``, ``out:``)  (17 rows), ``test_check_output_leaves_no_folder_it_made``
 P2    errors of the operating system the user can fix (no     paths ``test_a_full_disk_while_writing_…`` (ENOSPC, EROFS,
       space, read-only, permission denied): run, sweep,        EACCES; a run), ``test_a_full_disk_stops_a_sweep_…``,
       export                                                   ``test_a_full_disk_during_an_export_…`` (injected ENOSPC)
 P3    two processes making one run                            paths ``test_two_processes_making_one_run_train_it_once``,
                                                               ``test_the_second_holder_of_a_run_lock_…``
 P4    export into the run, ``reproduce --out`` into the run   paths "export --to inside the run", "…the run itself",
                                                               "reproduce --out into the run"
 P5    a truncated ``poison_indices.json``                     paths "export a truncated poison_indices.json"
 V1    non-finite or out-of-range config numbers (mean, std,   values "std inf", "mean nan", "std zero", "input range inf",
       input range, rates, amplitude, defence parameters)       "rate nan", "learning rate inf", "amplitude nan", "defence …"
 V2    masks and δ: 1e30, 1e5 (API), NaN, complex              values "mask 1e30", "mask 1e5", "mask nan", "mask complex",
                                                               "saved trigger of 1e30"; API "δ 1e5 …", "δ complex …", "δ inf"
 V3    a key named twice in a YAML file                        values "duplicate key …", "duplicate section", "… in a sweep",
                                                               ``test_duplicate_keys_refused_by_the_one_loader_…``
 V4    test labels no training image has                       values "test label never trained",
                                                               ``test_a_train_limit_that_drops_a_test_class_is_a_stated_…``
 V5    a range printed inverted                                values "no fraction fits, not an inverted range", "update batch
                                                               larger than the data, not a negative rest"
 V6    2^63 printed negative                                   values "uint64 label 2^63 printed as it is", API "uint64 …"
 V7    text the console formatting swallows (``[tensorboard]``,  values ``test_the_install_hint_keeps_its_brackets``, "brackets
       a bracketed path or name, a help text)                   in a message survive"; markup (3 tests: paths and names, a
                                                               sweep, ``--help``)
 V8    a three-frame GIF reported as "3×28"                    values "three-frame gif", "…as a mask", "…as a blend image"
 V9    the API raises perturbd's errors, not TypeError,        bad_input ``test_the_api_answers_a_careless_call_…`` (10
       MemoryError, NotADirectoryError                          rows); values and sizes API tables (33 rows)
=====  ======================================================  ===============================================================

=====  ======================================================  ===============================================================
 #     class of the issue (already covered)                    tests
=====  ======================================================  ===============================================================
 C1    config and CLI values                                   bad_input "unknown key" … "rate too small" (16 rows)
 C2    unknown names (data set, model, trigger, defence)        bad_input "unknown data set" … "unknown defense"
 C3    data files: missing, keys, NaN, range, one class,       bad_input "data not found" … "imagefolder without path"
       empty, a target without images; image folders; a       (12 rows; "npz holding a pickle": the pickle did not run)
       pickle in an npz
 C4    trigger files: mask missing, size, not an image, patch  bad_input "mask missing" … "patch too large" (5 rows)
 C5    checkpoints: other architecture, truncated, a pickle    bad_input "checkpoint of another architecture" … (3 rows)
 C6    models perturbd did not build                           bad_input "model weights missing" … "audit a model of …"
 C7    sweep files                                             bad_input "sweep axis over unknown key" … (3 rows)
 C8    ``!!python`` YAML tags (config and sweep)               bad_input "yaml !!python tag", "sweep file with a !!python
                                                               tag" (os.system did not run)
 C9    kill -9 mid-training, mid-write, mid-sweep              ``tests/test_interrupted.py``, ``tests/sweep/test_runner.py``
                                                               (``test_sigkilled_sweep_resumes``)
 R6    (found here) YAML that would exhaust the machine: an  bad_input "yaml alias bomb", "sweep alias bomb", "yaml alias to
       alias bomb (6 GB, then a hang), an alias to itself,      itself", "yaml nested too deeply", "yaml file of 17 MiB";
       nesting deeper than Python's stack, a huge file          sizes API "load_config of an alias bomb"
 X1    (beyond the issue's list) the command line itself:     bad_input "unknown option", "option value of the wrong type",
       click's usage errors, once a 5-line box                 "missing argument", "unknown command"
=====  ======================================================  ==============================================================="""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile import Touch, assert_api_error, run_case
from PIL import Image

from perturbd.errors import CheckpointError, ConfigError, OutputError, PerturbdError


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


def _hacked(t: Path) -> Path:
    """The marker a hostile file would write: in ``--out`` (``t`` is the inputs folder beside it),
    so that the table's "nothing in --out" check sees it."""
    return t.parent / "runs" / "hacked"


def _laughs(t: Path, name: str, key: str = "seed") -> Path:
    """A billion laughs: nine levels of nine aliases, 9^9 values once expanded, ten lines in the file."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines.append(f"{key}: [{', '.join(['*a8'] * 9)}]")
    return _write(t / name, "\n".join(lines) + "\n")


def _python_tag(t: Path, name: str) -> Path:
    return _write(t / name, f"seed: !!python/object/apply:os.system ['touch {_hacked(t)}']\n")


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
    # YAML that would run code, run names that would write outside --out
    "yaml !!python tag": lambda t: (["run", str(_python_tag(t, "c.yaml")), *RUN[1:]], "not valid YAML"),
    "run name escaping --out": lambda t: ([*RUN, "--set", "name=../escape"], "must be one folder name"),
    "run name absolute": lambda t: ([*RUN, "--set", f"name={t}/abs"], "must be one folder name"),
    # the command line itself (click's mistakes, one line like the rest)
    "unknown option": lambda t: (["run", "--bogus"], "error: No such option: --bogus"),
    "option value of the wrong type": lambda t: (["sweep", "s.yaml", "--max-runs", "abc"], "Invalid value for '--max-runs'"),
    "missing argument": lambda t: (["defend"], "error: Missing argument 'model'; see `perturbd defend --help`"),
    "unknown command": lambda t: (["nosuch"], "error: No such command 'nosuch'; see `perturbd --help`"),
    # YAML that would exhaust the machine: aliases, nesting, size
    "yaml alias bomb": lambda t: (["run", str(_laughs(t, "c.yaml")), *RUN[1:]], "more than 100,000 values once its aliases are expanded"),
    "yaml alias to itself": lambda t: (
        ["run", str(_write(t / "c.yaml", "poison: &p {rate: 0.1, again: *p}\n")), *RUN[1:]],
        "an alias to itself",
    ),
    "yaml nested too deeply": lambda t: (["run", str(_write(t / "c.yaml", "seed: " + "[" * 100_000)), *RUN[1:]], "nested too deeply"),
    "yaml file of 17 MiB": lambda t: (["run", str(_sparse(t / "c.yaml", 17 * 2**20)), *RUN[1:]], "is too large for a config"),
    "sweep alias bomb": lambda t: (["sweep", str(_laughs(t, "sweep.yaml", "seeds"))], "more than 100,000 values"),
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
    "npz holding a pickle": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', classes=np.array([Touch(_hacked(t)), 'b', 'c', 'd'], dtype=object))}"],
        "without object arrays",
    ),
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
    "sweep file with a !!python tag": lambda t: (["sweep", str(_python_tag(t, "sweep.yaml"))], "not valid YAML"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)
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


# --------------------------------------------------------------------------- the Python API


def _tiny_config() -> Any:
    from perturbd.config import load_config

    return load_config(overrides=["data.name=synthetic", "train.epochs=1", "data.train_limit=100", "data.test_limit=50"])


def _file(t: Path) -> Path:
    return _write(t / "file.txt", "x")


# the API answers a file where a folder is expected, a folder where a file is, and a list where an
# array is with its own one-line error (issue 39: not NotADirectoryError, IsADirectoryError, TypeError)
API_CASES: dict[str, tuple[Callable[[Path], object], type[PerturbdError], str]] = {
    "run into a file": (
        lambda t: __import__("perturbd.runs.experiment").runs.experiment.run(_tiny_config(), _file(t)),
        OutputError,
        "is a file, not a folder",
    ),
    "run below a file": (
        lambda t: __import__("perturbd.runs.experiment").runs.experiment.run(_tiny_config(), _file(t) / "runs"),
        OutputError,
        "is a file, not a folder",
    ),
    "export a file": (
        lambda t: __import__("perturbd.runs.export").runs.export.export_run(_file(t), t / "e"),
        ConfigError,
        "is not a run directory",
    ),
    "config of a file as a run": (
        lambda t: __import__("perturbd.runs.folder").runs.folder.RunDir(_file(t)).config(),
        ConfigError,
        "is not a finished run directory",
    ),
    "report of a file": (lambda t: __import__("perturbd.report.build").report.build.build_report(_file(t)), ConfigError, "no such folder"),
    "config file a folder": (lambda t: __import__("perturbd").load_config(t), ConfigError, "config file not found"),
    "trigger file a folder": (lambda t: __import__("perturbd.triggers").triggers.Trigger.load(t), CheckpointError, "not found"),
    "weights a folder": (
        lambda t: __import__("perturbd.models").models.build_from_checkpoint(t),
        CheckpointError,
        "model weights not found",
    ),
    "poison a list": (
        lambda t: __import__("perturbd").poison([[1]], [0], "grid"),
        ConfigError,
        "x must be a numpy array or a torch tensor",
    ),
    "model shape as text": (
        lambda t: __import__("perturbd.models").models.get_model("cnn28", "1x28x28", 10),
        ConfigError,
        "image_shape must be three positive integers",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_the_api_answers_a_careless_call_with_its_own_error(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    call, error, message = API_CASES[name]
    assert_api_error(lambda: call(tmp_path), error, message, name)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["file.txt"]), "nothing written"
