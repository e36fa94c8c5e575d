"""Adversary knowledge: disjoint data, the test set never read, surrogates, and the full-knowledge twin reuse."""

from __future__ import annotations

import pytest
import torch

from perturbd.attack import plan_attack
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.errors import ConfigError
from perturbd.knowledge import indices_hash, plan_adaptive, victim_and_aux
from perturbd.models import get_model
from perturbd.train import fit
from perturbd.triggers import TriggerContext

FAST = ["data.name=synthetic", "data.train_limit=500", "train.epochs=1", "train.batch_size=64", "trigger.kind=adaptive", "trigger.samples=40",
        "trigger.passes=1", "trigger.max_steps=2", "trigger.budget=10", "poison.target=3"]  # fmt: skip


class TrainOnly:
    """A split whose test set cannot be read: the adversary must never touch it."""

    def __init__(self, split: DataSplit) -> None:
        self.train = split.train

    @property
    def test(self) -> ImageDataset:
        raise AssertionError("the adversary read the test set")


@pytest.fixture(scope="module")
def split() -> DataSplit:
    return load_data(load_config(overrides=["data.name=synthetic", "data.train_limit=500"]).data, seed=0)


def _plan(split: DataSplit, *sets: str):
    cfg = load_config(overrides=[*FAST, *sets])
    ctx = TriggerContext(split.train.image_shape, cfg.seed, cfg.poison.target)
    return cfg, plan_adaptive(cfg, TrainOnly(split), ctx)  # type: ignore[arg-type]


def _rows(data: ImageDataset) -> set[bytes]:
    return {bytes(img.flatten().tolist()) for img in data.images}


@pytest.mark.parametrize("knowledge", ["model", "none"])
def test_auxiliary_data_is_disjoint_and_the_test_set_is_never_read(split, knowledge: str) -> None:
    cfg, plan = _plan(split, f"attack.knowledge={knowledge}", "attack.aux_fraction=0.2")
    victim_idx, aux_idx = victim_and_aux(cfg, split.train)
    assert aux_idx is not None and len(aux_idx) == 100 and len(victim_idx) == 400
    assert not set(aux_idx.tolist()) & set(victim_idx.tolist())
    assert sorted(aux_idx.tolist() + victim_idx.tolist()) == list(range(500))
    assert torch.equal(torch.bincount(split.train.labels[aux_idx], minlength=10), torch.full((10,), 10)), "stratified"
    assert len(plan.victim_train) == 400 and torch.equal(plan.victim_train.images, split.train.images[victim_idx])
    info = plan.info
    assert info["knowledge"] == knowledge and info["data"]["disjoint_from_victim"] and not info["data"]["test_set_used"]
    assert info["data"]["size"] == 100 and info["data"]["indices_sha256"] == indices_hash(aux_idx)
    assert info["data"]["mask_sample_pool"] + info["data"]["holdout_size"] == 100
    assert 0 <= info["model"]["holdout_accuracy"] <= 1 and not info["model"]["holdout_seen_in_training"]
    assert plan.clean_model is None
    assert info["trigger"]["norm"] == "linf" and info["trigger"]["linf"] <= 10
    if knowledge == "none":
        assert info["model"]["arch"] == "lenet5" and info["model"]["surrogate"]
    else:
        assert info["model"]["arch"] == info["model"]["victim_arch"] == "cnn28" and not info["model"]["surrogate"]
        assert info["model"]["seed"] != cfg.seed, "the adversary does not know the victim's initial weights"


def test_aux_fraction_leaving_too_little_data_is_one_line(split) -> None:
    for frac in ("0.01", "0.99"):
        cfg = load_config(overrides=[*FAST, "attack.knowledge=none", f"attack.aux_fraction={frac}"])
        with pytest.raises(ConfigError, match="attack.aux_fraction"):
            victim_and_aux(cfg, split.train)


def test_surrogate_of_the_victims_architecture_is_refused(split) -> None:
    with pytest.raises(ConfigError, match="is the victim's architecture"):
        _plan(split, "attack.knowledge=data", "attack.surrogate=cnn28")
    with pytest.raises(ConfigError, match="unknown model"):
        _plan(split, "attack.knowledge=data", "attack.surrogate=lenet")


def test_static_triggers_keep_the_victim_off_the_auxiliary_data_too(split) -> None:
    cfg = load_config(overrides=["data.name=synthetic", "attack.knowledge=none"])
    plan = plan_attack(cfg, split, torch.device("cpu"))
    assert len(plan.victim_train) == 400 and plan.info["model"] is None


def test_full_knowledge_model_is_exactly_the_clean_twin(split) -> None:
    cfg, plan = _plan(split, "attack.knowledge=full")
    assert plan.clean_model is not None and plan.victim_train is split.train
    assert plan.info["model"]["is_victim_clean_model"] and plan.info["model"]["holdout_seen_in_training"]
    assert not plan.info["data"]["disjoint_from_victim"] and plan.info["data"]["size"] == 500
    torch.manual_seed(cfg.seed)  # what settings.clean_twin does when it trains the twin itself
    twin = get_model(cfg.model.name, split.train.image_shape, split.train.num_classes)
    fit(twin, split.train, cfg.train, cfg.seed)
    ours, theirs = plan.clean_model.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), "bit-identical weights"


def test_data_knowledge_trains_a_surrogate_on_the_victims_data(split) -> None:
    _, plan = _plan(split, "attack.knowledge=data")
    m = plan.info["model"]
    assert m["surrogate"] and m["arch"] == "lenet5" and plan.clean_model is None
    assert plan.info["data"]["size"] == 500 and len(plan.victim_train) == 500


def test_cli_trigger_make_writes_a_mask_whose_reported_rate_is_real(cli, tmp_path) -> None:
    import json

    from perturbd.triggers import Trigger

    out = tmp_path / "m" / "mask.safetensors"
    sets = [a for s in [*FAST, "attack.knowledge=none"] for a in ("--set", s)]
    code, stdout, err = cli("trigger", "make", *sets, "-o", str(out))
    assert code == 0, err
    assert out.is_file() and out.with_suffix(".png").is_file() and out.with_suffix(".json").is_file()
    saved = Trigger.load(out)
    info = json.loads(out.with_suffix(".json").read_text())
    assert saved.kind == "adaptive" and saved.info == info["trigger"] and info["knowledge"] == "none"
    assert saved.norms()["linf"] <= 10 and not info["data"]["test_set_used"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "trigger.budget=0.5"], "below one grey level"),
        (["--set", "attack.knowledge=none", "--set", "attack.aux_fraction=0.01"], "attack.aux_fraction"),
        (["--set", "attack.knowledge=data", "--set", "attack.surrogate=cnn28"], "victim's architecture"),
        (["-o", "mask.png"], "must end in .safetensors"),
    ],
)
def test_cli_trigger_make_mistakes_are_one_line_exit_2(cli, monkeypatch, tmp_path, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    sets = [a for s in FAST for a in ("--set", s)]
    code, _, err = cli("trigger", "make", *sets, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir()), "no partial output"
