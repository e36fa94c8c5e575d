"""Adversary knowledge: disjoint data, the test set never read, surrogates, the victim's own clean model under full."""

from __future__ import annotations

import pytest
import torch

from perturbd.attack import indices_hash, partition, plan_attack, prepare_adversary
from perturbd.attack.adversary import surrogate_arch
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.errors import ConfigError
from perturbd.models import get_model, save_model
from perturbd.runs.twins import TwinStore
from perturbd.train import fit

CPU = torch.device("cpu")


def _plan(split, train_only, fast, *sets):
    cfg = load_config(overrides=[*fast, *sets])
    part = partition(cfg, split.train.labels, split.train.num_classes)
    twins = TwinStore()
    return cfg, part, twins, plan_attack(cfg, train_only, part, CPU, twins)


@pytest.mark.parametrize("knowledge", ["model", "none"])
def test_auxiliary_data_is_disjoint_and_the_test_set_is_never_read(split, train_only, fast, knowledge: str) -> None:
    cfg, part, _, plan = _plan(split, train_only, fast, f"attack.knowledge={knowledge}", "attack.aux_fraction=0.2")
    info = plan.record
    assert info["knowledge"] == knowledge and info["data"]["disjoint_from_victim"] and not info["data"]["test_set_used"]
    assert info["data"]["size"] == 100 and info["data"]["indices_sha256"] == indices_hash(part.auxiliary)
    assert info["data"]["victim_train_size"] == 400
    assert info["data"]["mask_sample_pool"] + info["data"]["holdout_size"] == 100
    assert 0 <= info["model"]["holdout_accuracy"] <= 1 and not info["model"]["holdout_seen_in_training"]
    assert not info["model"]["is_victim_clean_model"]
    assert info["trigger"]["norm"] == "linf" and info["trigger"]["linf"] <= 10
    if knowledge == "none":
        assert info["model"]["arch"] == "lenet5" and info["model"]["surrogate"]
    else:
        assert info["model"]["arch"] == info["model"]["victim_arch"] == "cnn28" and not info["model"]["surrogate"]
        assert info["model"]["seed"] != cfg.seed, "the adversary does not know the victim's initial weights"


def test_surrogate_of_the_victims_architecture_is_refused(split, train_only, fast) -> None:
    with pytest.raises(ConfigError, match="is the victim's architecture"):
        _plan(split, train_only, fast, "attack.knowledge=data", "attack.surrogate=cnn28")
    with pytest.raises(ConfigError, match="unknown model"):
        _plan(split, train_only, fast, "attack.knowledge=data", "attack.surrogate=lenet")


@pytest.mark.parametrize(
    ("shape", "victim", "expected"),
    [
        ((1, 28, 28), "cnn28", "lenet5"),
        ((1, 28, 28), "lenet5", "cnn28"),
        ((3, 32, 32), "fastnet32_small", "cnn32"),
        ((3, 32, 32), "cnn32", "fastnet32_small"),
    ],
)
def test_the_automatic_surrogate_is_an_architecture_for_the_images_kind(shape, victim, expected) -> None:
    """lenet5 is an MNIST network: on colour images the adversary takes a CIFAR one (lenet5 reached
    48–55 % held-out accuracy on CIFAR-10 (JPEG) as a surrogate)."""
    cfg = load_config(overrides=["attack.knowledge=none", f"model.name={victim}"])
    assert surrogate_arch(cfg, victim, shape, 10) == expected


def test_full_knowledge_model_is_the_victims_clean_model_trained_once(split, train_only, fast) -> None:
    cfg = load_config(overrides=[*fast, "attack.knowledge=full"])
    part = partition(cfg, split.train.labels, 10)
    twins = TwinStore()
    adversary = prepare_adversary(cfg, split.train, part, CPU, twins)
    m, d = adversary.record["model"], adversary.record["data"]
    assert m["is_victim_clean_model"] and m["holdout_seen_in_training"] and not d["disjoint_from_victim"] and d["size"] == 400
    twin = twins.clean_model(cfg, part.take(split.train, part.victim), CPU)
    assert twin.model is adversary.model and twin.seconds == 0.0, "the setting reuses it: trained once"
    again = get_model(cfg.model.name, split.train.image_shape, 10, seed=cfg.seed)  # what a clean twin of its own would be
    fit(again, part.take(split.train, part.victim), cfg.train, cfg.seed)
    ours, theirs = adversary.model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), "bit-identical weights"


def test_data_knowledge_trains_a_surrogate_on_the_victims_data(split, train_only, fast) -> None:
    _, _, _, plan = _plan(split, train_only, fast, "attack.knowledge=data")
    m = plan.record["model"]
    assert m["surrogate"] and m["arch"] == "lenet5" and not m["is_victim_clean_model"]
    assert plan.record["data"]["size"] == 400


def test_full_knowledge_of_an_update_is_the_pre_update_checkpoint(split, train_only, fast, tmp_path) -> None:
    ckpt = tmp_path / "pre.safetensors"
    save_model(get_model("cnn28", (1, 28, 28), 10, seed=5), ckpt)
    _cfg, part, _twins, plan = _plan(
        split, train_only, fast, "attack.setting=update", "attack.update_size=100", f"attack.checkpoint={ckpt}"
    )
    m = plan.record["model"]
    assert m["checkpoint"] == str(ckpt) and not m["is_victim_clean_model"] and m["train_seconds"] < 5
    assert plan.record["data"]["size"] == len(part.initial) == 300


def test_weights_knowledge_computes_the_mask_on_the_victims_deployed_model_with_auxiliary_data(split, train_only, fast) -> None:
    cfg = load_config(overrides=[*fast, "attack.knowledge=weights"])
    part = partition(cfg, split.train.labels, 10)
    twins = TwinStore()
    adversary = prepare_adversary(cfg, train_only.train, part, CPU, twins)
    m, d = adversary.record["model"], adversary.record["data"]
    assert m["is_victim_clean_model"] and not m["surrogate"] and m["arch"] == m["victim_arch"] and m["seed"] == cfg.seed
    assert d["disjoint_from_victim"] and d["size"] == 100 and not m["holdout_seen_in_training"]
    assert twins.clean_model(cfg, part.take(split.train, part.victim), CPU).model is adversary.model, "the deployed clean model itself"


def test_a_surrogate_trains_for_its_step_budget_not_the_victims_epochs(split, train_only, fast) -> None:
    cfg = load_config(overrides=[*fast, "attack.knowledge=none", "attack.surrogate_steps=30"])
    adversary = prepare_adversary(cfg, split.train, partition(cfg, split.train.labels, 10), CPU, TwinStore())
    m = adversary.record["model"]
    per_epoch = 90 // 64  # 90 images of its data after the hold-out, batches of 64
    assert m["train_steps"] >= 30 and m["train_steps"] % per_epoch == 0 and "30 epochs" in m["trained_on"]


def test_on_mnist5k_without_knowledge_the_surrogate_classifies(tmp_path) -> None:
    """Trained for the victim's 10 epochs (60 steps on 720 auxiliary images) lenet5 reached 45 %
    hold-out accuracy; with a step budget it classifies (0.94 with the default 1,000 steps)."""
    cfg = load_config(overrides=["attack.knowledge=none", "attack.surrogate_steps=300", "trigger.kind=adaptive", "train.device=cpu"])
    split = load_data(cfg.data, cfg.seed)
    adversary = prepare_adversary(cfg, split.train, partition(cfg, split.train.labels, 10), CPU, TwinStore())
    m = adversary.record["model"]
    assert m["arch"] == "lenet5" and m["train_steps"] >= 300
    assert m["holdout_accuracy"] >= 0.85, m
