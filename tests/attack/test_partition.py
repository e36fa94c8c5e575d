"""The partition of the training split: disjoint, stratified, seeded parts, every size checked up front."""

from __future__ import annotations

import pytest
import torch

from perturbd.attack import indices_hash, partition
from perturbd.config import load_config
from perturbd.errors import ConfigError

PART = ["data.name=synthetic", "data.train_limit=500", "poison.target=3", "poison.rate=0.1"]  # no training: the parts only


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.arange(500) % 10  # 50 images per class


def _part(labels: torch.Tensor, *sets: str):
    cfg = load_config(overrides=[*PART, *sets])
    return cfg, partition(cfg, labels, 10)


@pytest.mark.parametrize("knowledge", ["model", "weights", "none"])
def test_auxiliary_data_is_a_disjoint_stratified_share_and_the_adversarys_data(labels, knowledge: str) -> None:
    _, p = _part(labels, f"attack.knowledge={knowledge}", "attack.aux_fraction=0.2")
    assert p.auxiliary is not None and len(p.auxiliary) == 100 and len(p.victim) == 400
    assert not set(p.auxiliary.tolist()) & set(p.victim.tolist())
    assert sorted(p.auxiliary.tolist() + p.victim.tolist()) == list(range(500))
    assert torch.equal(torch.bincount(labels[p.auxiliary], minlength=10), torch.full((10,), 10)), "stratified"
    assert torch.equal(p.adversary, p.auxiliary) and torch.equal(p.initial, p.victim) and p.update is None
    assert torch.equal(p.poisoned_set, p.victim) and len(p.poison) == 40


@pytest.mark.parametrize("knowledge", ["full", "data"])
def test_knowing_the_data_the_adversary_holds_the_victims_training_set(labels, knowledge: str) -> None:
    _, p = _part(labels, f"attack.knowledge={knowledge}")
    assert torch.equal(p.adversary, p.victim) and len(p.victim) == 400
    _, everything = _part(labels, f"attack.knowledge={knowledge}", "attack.same_victim=false")
    assert (
        everything.auxiliary is None
        and torch.equal(everything.victim, torch.arange(500))
        and torch.equal(everything.adversary, everything.victim)
    )


def test_the_victim_is_the_same_whatever_the_adversary_knows(labels) -> None:
    parts = {k: _part(labels, f"attack.knowledge={k}")[1] for k in ("full", "data", "model", "weights", "none")}
    for p in parts.values():
        assert torch.equal(p.victim, parts["full"].victim) and torch.equal(p.poison, parts["full"].poison)
    assert len(parts["full"].poison) == 40, "the same poisoned count under every knowledge level"


def test_holdout_and_fit_split_the_adversarys_data(labels) -> None:
    _, p = _part(labels, "attack.knowledge=none", "attack.holdout_fraction=0.1")
    assert len(p.holdout) == 10 and len(p.fit) == 90
    assert sorted(p.holdout.tolist() + p.fit.tolist()) == sorted(p.adversary.tolist())
    assert torch.equal(torch.bincount(labels[p.holdout], minlength=10), torch.ones(10, dtype=torch.long))


def test_update_batch_is_new_data_disjoint_from_the_initial_training(labels) -> None:
    cfg, p = _part(labels, "attack.setting=update", "attack.update_size=200")
    assert p.update is not None and len(p.update) == 200 and len(p.initial) == 200 and len(p.victim) == 400
    assert not set(p.initial.tolist()) & set(p.update.tolist())
    assert torch.equal(torch.bincount(labels[p.update], minlength=10), torch.full((10,), 20)), "stratified"
    assert torch.equal(p.poisoned_set, p.update) and len(p.poison) == 20, "the rate is relative to the batch"
    assert torch.equal(p.adversary, p.initial), "knowledge full: the adversary has what the clean model trained on"
    again = partition(cfg, labels, 10)
    assert all(torch.equal(getattr(p, f), getattr(again, f)) for f in ("victim", "initial", "update", "holdout", "poison")), "seeded"
    with pytest.raises(ConfigError, match="attack.update_size 380"):
        _part(labels, "attack.setting=update", "attack.update_size=380")


def test_another_seed_draws_other_parts(labels) -> None:
    _, a = _part(labels, "attack.knowledge=none")
    _, b = _part(labels, "attack.knowledge=none", "seed=1")
    assert indices_hash(a.auxiliary) != indices_hash(b.auxiliary)


@pytest.mark.parametrize(
    "sets,message",
    [
        (["attack.knowledge=none", "attack.aux_fraction=0.01"], "attack.aux_fraction"),
        (["attack.knowledge=none", "attack.aux_fraction=0.99"], "attack.aux_fraction"),
        (["poison.rate=0.001"], "poisons no image"),
        (["attack.setting=update", "attack.update_size=20", "poison.rate=0.01"], "poisons no image"),
        (["poison.rate=0.95"], "lower poison.rate"),
    ],
)
def test_a_part_too_small_is_one_line(labels, sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _part(labels, *sets)
    assert "\n" not in str(err.value)


def test_take_returns_the_training_set_itself_when_a_part_is_all_of_it(labels) -> None:
    from perturbd.data import load_data

    cfg, p = _part(labels, "attack.same_victim=false")
    train = load_data(cfg.data, 0).train
    assert p.take(train, p.victim) is train
    sub = p.take(train, p.holdout)
    assert torch.equal(sub.images, train.images[p.holdout])
    with pytest.raises(ValueError):
        p.take(train.subset(torch.arange(10)), p.victim)
