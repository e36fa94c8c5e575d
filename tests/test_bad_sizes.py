"""Sizes a user or a file asks for are bounded before anything is allocated (perturbd.limits):
class counts (labels and targets below 100,000), seeds (0 ≤ seed < 2^63), the size of an
expanded sweep (max_runs, 10,000 by default, counted before a value is listed) and the pixel
count of every image file (2^26, read from the header before decoding). Each breach is one
line, exit 2 (the CLI) or a PerturbdError (the API), with nothing written."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_api_error, run_case
from PIL import Image

from perturbd.errors import CheckpointError, ConfigError, DataError, PerturbdError
from perturbd.limits import MAX_CLASSES, MAX_IMAGE_PIXELS, SEED_LIMIT, check_seed

BIG = 30_000  # 30000×30000 = 9×10^8 pixels: above Pillow's own bomb bound
MID = 9_000  # 9000×9000 = 8.1×10^7 pixels: above perturbd's bound, below Pillow's


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG holding only its header (IHDR, IEND): Image.open reads its size, decoding it would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def tiff_header(path: Path, width: int, height: int) -> Path:
    """A grey uncompressed TIFF holding only its IFD (no pixel data)."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 200), (277, 3, 1)]
    tags += [(278, 4, height), (279, 4, width * height)]
    entries = b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in tags
    )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0))
    return path


def _npy_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A ``.npy`` file of ``shape`` float32 whose data is absent (a header and a sparse tail)."""
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fh.truncate(fh.tell() + 4 * int(np.prod(shape)))
    return path


def _checkpoint(path: Path, **meta: str) -> Path:
    """A cnn28 checkpoint whose metadata says ``meta``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from perturbd.models import get_model, save_model

    save_model(get_model("cnn28", (1, 28, 28), 10), path, {})
    with safe_open(str(path), "pt") as fh:
        stored = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no mapping)
    save_file(tensors, str(path), {**stored, **meta})
    return path


def _folder(root: Path, big: Callable[[Path], Path]) -> Path:
    for part in ("train", "test"):
        for cls in ("a", "b"):
            (root / part / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(root / part / cls / f"{i}.png")
    big(root / "train" / "b")
    return root


def _npz(path: Path, y_train: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=y_train, x_test=x[:20], y_test=np.arange(20) % 4)
    return path


def _npz_declaring(path: Path, shape: tuple[int, ...], data: bytes = b"") -> Path:
    """An npz whose x_train header declares ``shape`` (uint8) but holds only ``data``."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", header.getvalue() + data)
        for key, value in {"y_train": np.arange(40) % 4, "x_test": np.zeros((20, 28, 28), np.uint8), "y_test": np.arange(20) % 4}.items():
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(f"{key}.npy", buf.getvalue())
    return path


def _labels_up_to(top: int) -> np.ndarray:
    y = np.arange(40) % 4
    y[5] = top
    return y


def _alias_bomb(tmp: Path) -> Path:
    """Six levels of ten aliases: 10^6 values once expanded, seven lines in the file."""
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"] + [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]" for i in range(1, 7)]
    return _sweep(tmp, "\n".join(lines) + "\n")


def _sweep(tmp: Path, body: str) -> Path:
    (tmp / "sweep.yaml").write_text(body)
    return tmp / "sweep.yaml"


RUN = ["run", "--set", "data.train_limit=500", "--set", "data.test_limit=100", "--set", "train.epochs=1"]
TOO_LARGE = f"perturbd reads images of at most {MAX_IMAGE_PIXELS:,} pixels"
Case = Callable[[Path], tuple[list[str], str]]

CLI_CASES: dict[str, Case] = {
    # class counts and targets
    "npz label of 10^9": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', _labels_up_to(10**9))}"],
        "y_train: label 1000000000 is too large: perturbd takes at most 100,000 classes",
    ),
    "npz label of 2^62": lambda t: ([*RUN, "--set", f"data.name=npz:{_npz(t / 'a.npz', _labels_up_to(2**62))}"], "is too large"),
    "checkpoint of 10^9 classes": lambda t: (
        [
            *RUN,
            "--set",
            "attack.setting=update",
            "--set",
            "attack.update_size=100",
            "--set",
            f"attack.checkpoint={_checkpoint(t / 'c.safetensors', num_classes=str(10**9))}",
        ],
        "1000000000 classes), not 'cnn28' (1x28x28 images, 10 classes)",
    ),
    "train.threads of 10^9": lambda t: (
        [*RUN, "--set", "train.threads=1000000000"],
        "'train.threads': Input should be less than or equal to 1024",
    ),
    "target of 10^9": lambda t: ([*RUN, "--set", "poison.target=1000000000"], "config 'poison.target': Input should be less than 100000"),
    # npz arrays, from their headers
    "npz header of 10^12 images": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz_declaring(t / 'a.npz', (10**12, 28, 28))}"],
        "x_train (1000000000000×28×28 uint8) needs 784,000,000,000,000 bytes, more than this machine's memory",
    ),
    "npz header larger than its data": lambda t: (
        [*RUN, "--set", f"data.name=npz:{_npz_declaring(t / 'a.npz', (1000, 28, 28), bytes(100))}"],
        "x_train declares 1000×28×28 uint8 (784,000 bytes) but holds 100; the file is truncated or corrupt",
    ),
    # seeds
    "seed of 10^30": lambda t: ([*RUN, "--set", f"seed={10**30}"], "config 'seed': Input should be less than 9223372036854775808"),
    "seed of 2^63": lambda t: ([*RUN, "--set", f"seed={2**63}"], "config 'seed'"),
    "sweep seeds 10^12": lambda t: (["sweep", str(_sweep(t, "seeds: 1000000000000\n"))], "a count of seeds above max_runs (10,000)"),
    "sweep seed of 2^63": lambda t: (["sweep", str(_sweep(t, f"seeds: [0, {2**63}]\n"))], "each seed must be below 2^63"),
    # sweep expansion
    "sweep range of step 1e-7": lambda t: (
        ["sweep", str(_sweep(t, "axes: {poison.rate: {range: [0.01, 1.0, 1.0e-7]}}\n"))],
        "gives 9,900,000 values, more than the sweep's max_runs (10,000)",
    ),
    "sweep linspace of 10^12": lambda t: (
        ["sweep", str(_sweep(t, "axes: {poison.rate: {linspace: [0.01, 0.5, 1000000000000]}}\n"))],
        "gives 1,000,000,000,000 values",
    ),
    "sweep integer range of 10^18": lambda t: (
        ["sweep", str(_sweep(t, "axes: {train.epochs: {range: [1, 1000000000000000000, 1]}}\n"))],
        "more than the sweep's max_runs",
    ),
    "sweep infinite range": lambda t: (
        ["sweep", str(_sweep(t, "axes: {poison.rate: {range: [0.01, .inf, 0.1]}}\n"))],
        "range takes finite numbers",
    ),
    "sweep grid above max_runs": lambda t: (
        [
            "sweep",
            str(_sweep(t, "axes: {poison.rate: {linspace: [0.01, 0.5, 200]}, trigger.amplitude: {range: [1, 201, 1]}}\nseeds: 3\n")),
        ],
        "the sweep expands to 120,000 runs (3 seeds × 200 poison.rate × 200 trigger.amplitude), more than max_runs (10,000)",
    ),
    "sweep above its own max_runs": lambda t: (
        ["sweep", str(_sweep(t, "max_runs: 5\naxes: {poison.rate: [0.1, 0.2, 0.3]}\nseeds: 2\n"))],
        "the sweep expands to 6 runs",
    ),
    "sweep above --max-runs": lambda t: (
        ["sweep", str(_sweep(t, "axes: {poison.rate: [0.1, 0.2, 0.3]}\nseeds: 2\n")), "--max-runs", "4"],
        "set max_runs: 6 in the sweep file (or --max-runs 6)",
    ),
    # images, checked from their header
    "imagefolder 30000² PNG": lambda t: (
        [*RUN, "--set", f"data.name=imagefolder:{_folder(t / 'f', lambda d: png_header(d / 'big.png', BIG, BIG))}"],
        f"big.png in {t / 'f'} is too large (900,000,000 pixels); {TOO_LARGE}",
    ),
    "imagefolder 30000² TIFF": lambda t: (
        [*RUN, "--set", f"data.name=imagefolder:{_folder(t / 'f', lambda d: tiff_header(d / 'big.tif', BIG, BIG))}"],
        "big.tif in",
    ),
    "imagefolder 9000² PNG": lambda t: (
        [*RUN, "--set", f"data.name=imagefolder:{_folder(t / 'f', lambda d: png_header(d / 'big.png', MID, MID))}"],
        f"is too large (9000×9000 = 81,000,000 pixels); {TOO_LARGE}",
    ),
    "mask 30000² PNG": lambda t: (
        [*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={png_header(t / 'm.png', BIG, BIG)}"],
        f"mask {t / 'm.png'} is too large",
    ),
    "mask 9000² TIFF": lambda t: (
        [*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={tiff_header(t / 'm.tif', MID, MID)}"],
        "(9000×9000 = 81,000,000 pixels)",
    ),
    "npy mask of 30000²×3": lambda t: (
        [*RUN, "--set", "trigger.kind=image", "--set", f"trigger.path={_npy_header(t / 'm.npy', (3, BIG, BIG))}"],
        "(3×30000×30000 = 2,700,000,000 values)",
    ),
    "blend image 30000² TIFF": lambda t: (
        [*RUN, "--set", "trigger.kind=blended", "--set", f"trigger.path={tiff_header(t / 'b.tif', BIG, BIG)}"],
        f"blend image {t / 'b.tif'} is too large",
    ),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_a_size_out_of_bounds_is_one_line_exit_2_nothing_written(name: str, cli, monkeypatch, tmp_path) -> None:
    out = run_case(cli, CLI_CASES[name], tmp_path, monkeypatch, squeeze=True)
    assert not out.exists(), "nothing written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def _poison(**kwargs: object) -> None:
    import perturbd

    x = np.zeros((20, 28, 28), np.uint8)
    y = kwargs.pop("y", np.arange(20) % 4)
    perturbd.poison(x, y, "grid", **kwargs)


API_CASES: dict[str, tuple[Callable[[Path], object], type[PerturbdError], str]] = {
    "poison target=10**9": (lambda t: _poison(target=10**9), ConfigError, "less than 100000"),
    "poison seed=10**30": (lambda t: _poison(seed=10**30), ConfigError, "seed must be in [0, 2^63 - 1]"),
    "poison seed=-1": (lambda t: _poison(seed=-1), ConfigError, "got -1"),
    "poison seed=2**63": (lambda t: _poison(seed=2**63), ConfigError, f"got {2**63}"),
    "poison seed=1.5": (lambda t: _poison(seed=1.5), ConfigError, "must be an integer"),
    "poison a label of 10**9": (lambda t: _poison(y=np.r_[np.arange(19) % 4, 10**9]), DataError, "label 1000000000 is too large"),
    "get_model seed=10**30": (
        lambda t: __import__("perturbd.models").models.get_model("cnn28", (1, 28, 28), 10, seed=10**30),
        ConfigError,
        "seed must be in",
    ),
    "get_model 10**9 classes": (
        lambda t: __import__("perturbd.models").models.get_model("cnn28", (1, 28, 28), 10**9),
        ConfigError,
        "num_classes must be at most 100,000",
    ),
    "get_model image of 10**10 pixels": (
        lambda t: __import__("perturbd.models").models.get_model("auto", (1, 100_000, 100_000), 10),
        ConfigError,
        "out of bounds",
    ),
    "build_from_checkpoint of 10**9 classes": (
        lambda t: __import__("perturbd.models").models.build_from_checkpoint(_checkpoint(t / "c.safetensors", num_classes=str(10**9))),
        CheckpointError,
        "num_classes must be at most 100,000",
    ),
    "build_from_checkpoint of 1x100000x100000 images": (
        lambda t: __import__("perturbd.models").models.build_from_checkpoint(
            _checkpoint(t / "c.safetensors", image_shape="1x100000x100000")
        ),
        CheckpointError,
        "out of bounds",
    ),
    "load_config seed=10**30": (
        lambda t: __import__("perturbd").load_config(overrides=[f"seed={10**30}"]),
        ConfigError,
        "config 'seed'",
    ),
    "load_config of an alias bomb": (
        lambda t: __import__("perturbd").load_config(_alias_bomb(t)),
        ConfigError,
        "more than 100,000 values once its aliases are expanded",
    ),
    "axis_values range step 1e-7": (
        lambda t: __import__("perturbd.sweep.axes").sweep.axes.axis_values("poison.rate", {"range": [0.0, 1.0, 1e-7]}),
        ConfigError,
        "gives 10,000,000 values",
    ),
    "read_sweep seeds 10**12": (
        lambda t: __import__("perturbd.sweep.config").sweep.config.read_sweep(_sweep(t, "seeds: 1000000000000\n")),
        ConfigError,
        "max_runs",
    ),
    "read_sweep above max_runs override": (
        lambda t: __import__("perturbd.sweep.config").sweep.config.read_sweep(_sweep(t, "seeds: 3\n"), {"max_runs": 2}),
        ConfigError,
        "a count of seeds above max_runs (2)",
    ),
    "load_inputs seed=2**63": (
        lambda t: __import__("perturbd.runs.saved").runs.saved.load_inputs(t / "none", seed=2**63),
        ConfigError,
        "seed must be in",
    ),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_the_api_raises_perturbds_error_in_one_line(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    call, error, message = API_CASES[name]
    assert_api_error(lambda: call(tmp_path), error, message)


def test_bounds_pass_what_is_inside_them(tmp_path) -> None:
    from perturbd.imageread import open_image
    from perturbd.sweep.config import read_sweep

    assert check_seed(SEED_LIMIT - 1) == SEED_LIMIT - 1
    assert check_seed(np.int64(7)) == 7
    path = png_header(tmp_path / "edge.png", 8192, 8192)  # exactly MAX_IMAGE_PIXELS
    with open_image(path, "image") as img:
        assert img.size == (8192, 8192)
    assert len(read_sweep(_sweep(tmp_path, "seeds: 3\n"), {"max_runs": 3}).runs) == 3
    assert len(read_sweep(_sweep(tmp_path, "max_runs: 20\nseeds: 20\n")).runs) == 20
    _poison(target=MAX_CLASSES - 1, y=np.r_[np.arange(19) % 4, MAX_CLASSES - 1])
