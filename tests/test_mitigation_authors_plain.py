"""experiments/mitigation_authors_plain.py: NAD, ANP, I-BAU, CLP and FT-SAM as their authors' code
runs them, in plain PyTorch, beside perturbd's on one planted backdoor — the JSON's structure on
the tiny case, seeded repeats, and CLP's pruned channels equal to perturbd's exactly."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import load_experiment

from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.models import get_model


@pytest.fixture(scope="module")
def plain():
    return load_experiment("mitigation_authors_plain")


@pytest.fixture(scope="module")
def tiny(plain, tmp_path_factory):
    out = tmp_path_factory.mktemp("xcheck")
    return plain.main(["--tiny", "--threads", "1", "--out", str(out)]), out


def test_the_tiny_case_writes_both_sides_of_every_method(plain, tiny) -> None:
    result, out = tiny
    assert json.loads((out / "mitigation_authors_plain.json").read_text()) == json.loads(json.dumps(result))
    md = (out / "mitigation_authors_plain.md").read_text()
    assert md.startswith("# ") and result["command"] in md and result["code"]["code_digest"] in md and result["machine"]["cpu"] in md
    assert result["before"]["asr"] > 0.9 and result["before"]["accuracy"] > 0.8, "the planted backdoor is learned"
    assert list(result["methods"]) == list(plain.rows(list(plain.METHODS))), "every method at its defaults, then its variants"
    assert [
        row["method"]
        for row in result["methods"].values()
        if row["params"] == plain.SETTINGS[row["method"]] | plain.TINY_SETTINGS[row["method"]]
    ] == list(plain.METHODS)
    for label, row in result["methods"].items():
        method = row["method"]
        for side in ("perturbd", "plain"):
            scores = row[side]
            assert set(scores) == {"accuracy", "asr", "robust_accuracy", "der", "seconds"}, (method, side)
            assert all(0 <= scores[k] <= 1 for k in ("accuracy", "asr", "robust_accuracy", "der")), (method, side)
            assert scores["asr"] + scores["robust_accuracy"] <= 1 + 1e-6, "disjoint shares of the same images (float32 sums)"
            assert f"| {label} | {'perturbd' if side == 'perturbd' else 'authors'}" in md
        share = round(row["params"].get("share", 0) * result["defender_clean_images"])
        assert row["clean_used"] == (0 if method == "clp" else row["params"].get("n_clean", share))
        assert (row["clean_used"] > 0) == (method != "clp"), "CLP is data-free; the others read clean images"
    clp = [row["compare"] for row in result["methods"].values() if row["method"] == "clp"]
    assert all(c["same_pruned"] is True for c in clp) and any(any(c["pruned_plain"].values()) for c in clp), "equal, and not only empty"
    matched = result["methods"]["anp, plain with perturbd's draws"]["compare"]
    assert matched["mask_max_difference"] < 1e-5 and matched["pruned_plain"] == matched["pruned_perturbd"], (
        "on the same draws the authors' NoisyBatchNorm2d loop gives perturbd's masks"
    )
    for label in ("nad, plain on perturbd's schedule", "ibau, plain with perturbd's choices", "ft_sam, plain on perturbd's schedule"):
        assert result["methods"][label]["compare"]["max_weight_difference"] < 1e-4, f"{label}: the same training, up to rounding"
    assert result["methods"]["nad"]["compare"]["layers_plain"] == result["methods"]["nad"]["compare"]["layers_perturbd"]


def test_same_seed_same_numbers(plain, tiny, tmp_path) -> None:
    first, _ = tiny
    again = plain.main(["--tiny", "--threads", "1", "--method", "anp", "ibau", "--out", str(tmp_path)])
    assert again["before"] == first["before"]
    for method in ("anp", "ibau"):
        for side in ("perturbd", "plain"):
            a, b = (dict(r["methods"][method][side]) for r in (first, again))
            a.pop("seconds"), b.pop("seconds")
            assert a == b, (method, side)


def _cnn28(seed: int) -> torch.nn.Module:
    """cnn28 with random BatchNorm scales and running variances, one channel per layer made an outlier."""
    torch.manual_seed(seed)
    net = get_model("cnn28", (1, 28, 28), 10).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.1)
            bn.weight[seed % bn.num_features] *= 20
    return net


@pytest.mark.parametrize(("seed", "u"), [(0, 3.0), (1, 3.0), (2, 1.0), (3, 0.0)])
def test_clp_prunes_the_channels_the_authors_code_prunes(plain, seed: int, u: float) -> None:
    net = _cnn28(seed)
    theirs = copy.deepcopy(net)
    pruned = plain.plain_clp(theirs, u)
    shape_only = ImageDataset(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), tuple("0123456789"))
    ours = build_defense("clp", u=u).fit(net, shape_only)
    assert ours.pruned_ == pruned and any(pruned.values()), "the same channels, and some"
    state_ours, state_theirs = ours.model_.state_dict(), theirs.state_dict()
    assert all(torch.equal(state_ours[k], state_theirs[k]) for k in state_ours), "the same pruned weights"


def test_an_output_folder_that_is_a_file_is_one_line_and_exit_2(plain, tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("")
    assert plain.cli(["--tiny", "--method", "clp", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give a folder" in err


def test_anp_drift_writes_the_mask_gap_per_number_of_steps(plain, tmp_path) -> None:
    result = plain.main(["--tiny", "--threads", "1", "--anp-drift", "2", "5", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "anp_drift.json").read_text()) == json.loads(json.dumps(result))
    assert [d["steps"] for d in result["drift"]] == [2, 5] and not (tmp_path / "mitigation_authors_plain.json").exists()
    assert all(d["max_mask_difference"] < 1e-5 and d["masks_apart_1e-4"] == 0 for d in result["drift"]), "a few steps: the same masks"
