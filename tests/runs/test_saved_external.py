"""``perturbd defend`` and ``perturbd audit`` on models perturbd did not make: a torchvision
ResNet-18 state dict (``--arch tv:resnet18``) and a TorchScript file give the verdicts, and the
scores, of perturbd's own checkpoint of the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from external_models import HALF, resnet_files, tiny_npz

from perturbd.cli.defences import model_options
from perturbd.defenses.activation_clustering import ActivationClustering
from perturbd.defenses.spectral_signature import SpectralSignature
from perturbd.errors import CheckpointError, ConfigError
from perturbd.runs.saved import load_inputs

# how each file is named on the command line: perturbd's checkpoint records everything
ARGS = {
    "own": [],
    "plain": ["--arch", "tv:resnet18", *[a for s in HALF for a in ("--set", s)]],
    "wrapped": ["--arch", "tv:resnet18", *[a for s in HALF for a in ("--set", s)]],
    "parallel": ["--arch", "tv:resnet18", *[a for s in HALF for a in ("--set", s)]],
    "scripted": [a for s in HALF for a in ("--set", s)],
}
AUDIT = ["-p", "n_clean=24", "-p", "nc_epochs=2", "-p", "nc_batch=8", "-p", "uap_steps=4", "-p", "uap_batch=8"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("external")
    return {"old": resnet_files(folder / "old", seed=0), "new": resnet_files(folder / "new", seed=1), "data": tiny_npz(folder / "data.npz")}


def _spec(kind: str) -> dict:
    args, out = ARGS[kind], {}
    for flag, value in zip(args[::2], args[1::2]):
        key, _, raw = ("name", "", value) if flag == "--arch" else value.removeprefix("model.").partition("=")
        out[key] = value if flag == "--arch" else json.loads(raw)
    return out


@pytest.mark.parametrize("kind", ["plain", "wrapped", "parallel", "scripted"])
@pytest.mark.parametrize("layer", [None, "layer4"])
def test_screening_scores_equal_those_of_perturbds_own_checkpoint(models, kind, layer):
    data, extra = f"npz:{models['data']}", ({"features": layer} if layer else {})
    own = load_inputs(models["new"]["own"], data=data, model=extra)
    theirs = load_inputs(models["new"][kind], data=data, model={**_spec(kind), **extra})
    for build in (SpectralSignature, lambda: ActivationClustering(seed=0)):
        mine, other = build().fit(own.model, own.train), build().fit(theirs.model, theirs.train)
        assert torch.equal(mine.scores_, other.scores_), mine.name
        assert torch.equal(mine.flagged_, other.flagged_)


@pytest.mark.parametrize("kind", ["plain", "scripted"])
def test_cli_defend_gives_the_same_report(models, kind, cli, tmp_path):
    reports = {}
    for which in ("own", kind):
        code, _, err = cli("defend", str(models["new"][which]), "--data", f"npz:{models['data']}",
                           "-d", "spectral_signature", "-d", "activation_clustering",
                           "--features", "layer4", *ARGS[which], "-o", str(tmp_path / which))  # fmt: skip
        assert code == 0, err
        reports[which] = [
            {k: d[k] for k in ("name", "metrics", "cell")} for d in json.loads((tmp_path / which / "defenses.json").read_text())["defenses"]
        ]
    assert reports["own"] == reports[kind]


@pytest.mark.parametrize("kind", ["plain", "scripted"])
def test_cli_audit_gives_the_same_verdicts(models, kind, cli, tmp_path):
    verdicts = {}
    for which in ("own", kind):
        code, _out, err = cli(
            "audit",
            str(models["old"][which]),
            str(models["new"][which]),
            "--data",
            f"npz:{models['data']}",
            *AUDIT,
            *ARGS[which],
            "-o",
            str(tmp_path / which),
        )
        assert code == 0, err
        verdicts[which] = json.loads((tmp_path / which / "audit.json").read_text())["labels"]
    assert [r["verdict"] for r in verdicts["own"]] == [r["verdict"] for r in verdicts[kind]]
    for mine, theirs in zip(verdicts["own"], verdicts[kind]):
        for key, value in mine.items():
            assert theirs[key] == (
                value if kind != "scripted" or not isinstance(value, float) else pytest.approx(value, rel=1e-4, abs=1e-6)
            ), key


def test_a_state_dict_without_arch_and_a_torchscript_file_with_one_are_one_line(models):
    data = f"npz:{models['data']}"
    with pytest.raises(CheckpointError, match="name the architecture with --arch tv:NAME"):
        load_inputs(models["new"]["plain"], data=data)
    with pytest.raises(ConfigError, match="TorchScript file: it holds its own architecture"):
        load_inputs(models["new"]["scripted"], data=data, model={"name": "tv:resnet18"})
    with pytest.raises(ConfigError, match="--set here takes model.KEY=VALUE"):
        model_options(None, None, ["train.epochs=2"])
