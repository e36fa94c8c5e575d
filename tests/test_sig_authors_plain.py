"""experiments/sig_authors_plain.py: the authors' SIG experiment in plain PyTorch — their trigger's
uint8 cast, their LeNet-5, and a tiny seeded pass on full MNIST."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_experiment


@pytest.fixture(scope="module")
def plain():
    return load_experiment("sig_authors_plain")


def test_the_trigger_is_numpys_uint8_cast_of_the_float_sum(plain) -> None:
    ramp = 30 * np.arange(28) / 28
    white, black = np.full((1, 28, 28), 255, np.uint8), np.zeros((1, 28, 28), np.uint8)
    assert plain.wrap_ramp(white, 30)[0, 0, 0] == 255, "column 0 adds nothing"
    assert np.array_equal(plain.wrap_ramp(white, 30)[0, 0, 1:], np.floor(255 + ramp[1:]).astype(int) - 256), (
        "255 + 1.07 truncates to 256 and wraps to 0"
    )
    assert np.array_equal(plain.wrap_ramp(black, 30)[0, 3], np.floor(ramp).astype(np.uint8)), "below 256 it is the truncated ramp"


def test_their_lenet5_is_perturbds_lenet5_valid_layer_for_layer(plain) -> None:
    import torch

    from perturbd.models import get_model

    theirs = [tuple(p.shape) for p in plain.their_lenet5().parameters()]
    ours = [tuple(p.shape) for p in get_model("lenet5_valid", (1, 28, 28), 10).parameters()]
    assert theirs == ours and sum(int(np.prod(s)) for s in theirs) == 44426
    net = plain.their_lenet5()
    assert all(not m.bias.detach().any() for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))), "Keras's zero biases"


def test_a_tiny_run_is_seeded_and_reports_twin_and_backdoored(plain, data_root, tmp_path) -> None:
    args = ["--data-root", str(data_root), "--seeds", "0", "--epochs", "2", "--every", "1", "--limit", "1200", "--threads", "1"]
    first = plain.main([*args, "--out", str(tmp_path / "a.json")])
    again = plain.main(args)
    (run,) = first["runs"]
    assert run["train_images"] == 1080 and run["poisoned"] == int(run["of_target_class"] * 0.1) > 0
    assert [h["epoch"] for h in run["history"]] == [1, 2] and len(run["twin_history"]) == 2
    assert 0 <= run["clean_model_asr"] <= 1 and run["clean_accuracy"] > 0.5
    assert {k: v for k, v in run.items() if k != "seconds"} == {k: v for k, v in again["runs"][0].items() if k != "seconds"}, (
        "same seed, same numbers"
    )
    assert (tmp_path / "a.json").is_file()


def test_a_folder_without_mnist_is_one_line_and_exit_2(plain, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        plain.main(["--data-root", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "pass --data-root" in err
