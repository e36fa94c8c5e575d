"""Derived seeds and generators: deterministic, independent per part and namespace, 63-bit; the
data limits draw from theirs."""

from __future__ import annotations

import torch

from perturbd.config import DataConfig
from perturbd.data import load_data, stratified_indices
from perturbd.seeding import complement, derived_generator, derived_seed

PARTS = ["train", "test", "aux", "holdout", "update", "defense"]


def test_derived_seed_is_pinned_and_deterministic() -> None:
    # same seed, same part ⇒ same choices on any machine, in any version: these two numbers are the
    # SHA-256 derivation of the docstring; changing them changes every run's data subset and split
    assert derived_seed(0, "train", namespace="limit") == 6215724512992398676
    assert derived_seed(0, "train") == 6826099574356261405
    assert derived_seed(7, "aux") == derived_seed(7, "aux", namespace="attack")


def test_derived_seeds_differ_per_seed_part_and_namespace() -> None:
    seeds = {derived_seed(s, part, ns) for s in range(5) for part in PARTS for ns in ("attack", "limit", "defense")}
    assert len(seeds) == 5 * len(PARTS) * 3
    assert derived_seed(1, "train") != derived_seed(1, "train", namespace="limit")


def test_derived_seeds_use_63_bits() -> None:
    seeds = [derived_seed(0, f"part{i}") for i in range(200)]
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)  # fits torch's manual_seed as a positive int64
    assert max(seeds) >= 2**62  # the top bit of the 63 is used (fails with probability 2**-200)


def test_derived_generator_is_seeded_with_the_derived_seed() -> None:
    gen = derived_generator(3, "aux")
    assert gen.initial_seed() == derived_seed(3, "aux") and gen.device == torch.device("cpu")
    a = torch.randperm(50, generator=derived_generator(3, "aux"))
    assert torch.equal(a, torch.randperm(50, generator=derived_generator(3, "aux")))
    assert not torch.equal(a, torch.randperm(50, generator=derived_generator(3, "holdout")))
    assert not torch.equal(a, torch.randperm(50, generator=derived_generator(3, "aux", namespace="limit")))


def test_drawing_from_one_part_never_shifts_another_or_the_global_rng() -> None:
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    torch.manual_seed(0)
    alone = torch.rand(4, generator=derived_generator(0, "holdout"))
    busy = derived_generator(0, "aux")
    torch.rand(1000, generator=busy)  # another part draws a lot ...
    after = torch.rand(4, generator=derived_generator(0, "holdout"))
    assert torch.equal(alone, after)  # ... and this part draws the same
    assert torch.equal(torch.rand(3), expected_global)


def test_complement() -> None:
    assert complement(6, torch.tensor([4, 1])).tolist() == [0, 2, 3, 5]
    assert complement(4, torch.tensor([2, 2, 0])).tolist() == [1, 3]  # duplicates are fine
    assert complement(3, torch.tensor([], dtype=torch.long)).tolist() == [0, 1, 2]
    assert complement(3, torch.arange(3)).tolist() == []
    keep = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:30]
    rest = complement(100, keep)
    assert rest.dtype == torch.int64 and torch.equal(rest, rest.sort().values)
    assert sorted(keep.tolist() + rest.tolist()) == list(range(100))


def test_load_data_limits_draw_from_the_limit_namespace() -> None:
    full = load_data(DataConfig(name="synthetic"))
    limited = load_data(DataConfig(name="synthetic", train_limit=100, test_limit=30), seed=5)
    for part, size in (("train", 100), ("test", 30)):
        data = getattr(full, part)
        idx = stratified_indices(data.labels, size, derived_generator(5, part, namespace="limit"), data.num_classes)
        assert torch.equal(getattr(limited, part).images, data.images[idx]), part
        assert torch.equal(getattr(limited, part).labels, data.labels[idx]), part
    other = stratified_indices(full.train.labels, 100, derived_generator(5, "train"), full.train.num_classes)
    assert not torch.equal(limited.train.images, full.train.images[other])  # not the attack namespace
