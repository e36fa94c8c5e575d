"""``perturbd.run(cfg, data=...)``: arrays checked as npz files are, named by their content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.data.arrays import register_arrays
from perturbd.errors import DataError
from perturbd.runs.experiment import run


def _arrays(n_train: int = 300, n_test: int = 100) -> tuple[np.ndarray, ...]:
    split = load_data(load_config(overrides=[f"data.train_limit={n_train}", f"data.test_limit={n_test}"]).data)
    return tuple(t.numpy() for t in (split.train.images, split.train.labels, split.test.images, split.test.labels))


def test_layouts_and_types_give_one_data_set_named_by_its_content():
    x, y, xt, yt = _arrays()
    name = register_arrays((x, y, xt, yt))
    assert name.startswith("arrays:") and len(name) == len("arrays:") + 16
    channels_last = (x.transpose(0, 2, 3, 1), y, xt.transpose(0, 2, 3, 1), yt)
    assert register_arrays(channels_last) == name
    assert register_arrays(tuple(torch.from_numpy(a) for a in (x, y, xt, yt))) == name
    assert register_arrays((x[:, 0], y, xt[:, 0], yt)) == name, "grey (N, H, W)"
    assert register_arrays((x.astype(np.float32) / 255, y, xt, yt)) == name, "floats in [0, 1] are rounded to the same pixels"
    assert register_arrays((x, y, xt, (yt + 1) % 10)) != name
    split = load_data(load_config(overrides=[f"data.name={name}"]).data)
    assert split.train.name == name and torch.equal(split.train.images, torch.from_numpy(x))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda a: a[:3], "data= takes \\(x_train, y_train, x_test, y_test\\)"),
        (lambda a: [a[0], list(a[1]), a[2], a[3]], "y_train is a list"),
        (lambda a: (a[0], a[1], a[2].astype(np.float64) * 2, a[3]), "data=: x_test is float64 with values in"),
        (lambda a: (a[0], a[1][:-1], a[2], a[3]), "data=: y_train has 299 labels for 300 images"),
        (lambda a: (a[0][:, :, :, :20], a[1], a[2], a[3]), "x_train images are .* but x_test images are"),
    ],
    ids=["three arrays", "a list", "out of range", "label count", "sizes differ"],
)
def test_bad_arrays_are_one_line(data, message):
    with pytest.raises(DataError, match=message) as err:
        register_arrays(data(_arrays()))
    assert "\n" not in str(err.value)


def test_unknown_arrays_name_is_a_one_line_error():
    with pytest.raises(DataError, match="perturbd.run\\(cfg, data="):
        load_data(load_config(overrides=["data.name=arrays:0123456789abcdef"]).data)


def test_a_run_on_arrays_equals_a_run_on_the_same_npz(tiny_overrides, tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "d.npz", **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)))
    base = [*tiny_overrides, "train.epochs=1", "data.train_limit=1000"]
    from_file = run(load_config(overrides=[*base, f"data.name=npz:{tmp_path / 'd.npz'}"]), tmp_path / "runs")
    from_arrays = run(load_config(overrides=base), tmp_path / "runs", data=arrays)
    assert from_arrays.metrics.model_dump(exclude={"config_hash"}) == from_file.metrics.model_dump(exclude={"config_hash"})
    assert from_arrays.run_dir.name.startswith("arrays-") and from_arrays.run_dir != from_file.run_dir
