"""Poisoning: exact injection counts, target class never touched, clean copy untouched, seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from perturbd.config import PoisonConfig, TriggerConfig
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.poisoning import choose_indices, poison_dataset
from perturbd.triggers import TriggerContext, build_trigger


@pytest.fixture
def data() -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (1000, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(1000) % 10
    return ImageDataset(images, labels, tuple(str(i) for i in range(10)), "toy")


@pytest.fixture
def grid():
    return build_trigger(TriggerConfig(kind="grid", amplitude=10), TriggerContext((1, 8, 8), 0))


@pytest.mark.parametrize("rate,count", [(0.01, 10), (0.05, 50), (0.0105, 10), (0.9, 900)])
def test_exact_injection_count(data, grid, rate, count) -> None:
    p = poison_dataset(data, grid, PoisonConfig(rate=rate, target=3), seed=0)
    assert len(p.indices) == count
    assert p.injection_rate == count / 1000
    assert bool((data.labels[p.indices] != 3).all()), "target-class images are never poisoned"
    assert bool((p.dataset.labels[p.indices] == 3).all())


def test_only_chosen_images_change_and_clean_set_untouched(data, grid) -> None:
    before = data.images.clone()
    p = poison_dataset(data, grid, PoisonConfig(rate=0.1, target=0), seed=1)
    assert torch.equal(data.images, before)
    changed = (p.dataset.images != data.images).flatten(1).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= set(p.indices.tolist())
    assert torch.equal(p.dataset.images[p.indices], grid.apply(data.images[p.indices]))
    keep = torch.ones(1000, dtype=torch.bool)
    keep[p.indices] = False
    assert torch.equal(p.dataset.labels[keep], data.labels[keep])


def test_sources_restrict_the_choice(data) -> None:
    idx = choose_indices(data.labels, PoisonConfig(rate=0.05, target=0, sources=[1, 2]), seed=0)
    assert set(data.labels[idx].tolist()) <= {1, 2}


def test_same_seed_same_indices(data) -> None:
    cfg = PoisonConfig(rate=0.03)
    assert torch.equal(choose_indices(data.labels, cfg, 5), choose_indices(data.labels, cfg, 5))
    assert not torch.equal(choose_indices(data.labels, cfg, 5), choose_indices(data.labels, cfg, 6))


def test_unquantized_poison_is_float_and_the_trigger_is_applied_the_same_way_at_test_time(data) -> None:
    # poison.quantize: false trains with the unrounded δ (2.5 grey levels): testing must add 2.5 too, not round(2.5) = 2
    soft = replace(build_trigger(TriggerConfig(kind="grid", amplitude=2.5), TriggerContext((1, 8, 8), 0, quantize=False)), quantize=False)
    p = poison_dataset(data, soft, PoisonConfig(rate=0.01, quantize=False), seed=0)
    assert p.dataset.images.dtype == torch.float32 and float(p.dataset.images.max()) <= 1.0
    test = data.images[:5]
    shifted = soft.apply(test)
    assert shifted.dtype == torch.float32
    assert torch.allclose((shifted - to_float01(test))[:, :, ::2, ::2], torch.full((5, 1, 4, 4), 2.5 / 255))
    assert torch.equal(p.dataset.images[p.indices], soft.apply(data.images[p.indices])), "one trigger, applied one way"
    assert soft.norms() == {"linf": 2.5, "l2": 2.5 * 4}
    with pytest.raises(ConfigError, match="poison.quantize"):
        poison_dataset(data, soft, PoisonConfig(rate=0.01), seed=0)


def test_errors_are_clear(data, grid) -> None:
    with pytest.raises(ConfigError, match=r"poison.target must be in \[0, 9\], got 12"):
        poison_dataset(data, grid, PoisonConfig(target=12), seed=0)
    with pytest.raises(ConfigError, match="poisons no image"):
        poison_dataset(data, grid, PoisonConfig(rate=0.0001), seed=0)
    with pytest.raises(ConfigError, match="lower poison.rate"):
        poison_dataset(data, grid, PoisonConfig(rate=0.95), seed=0)
    with pytest.raises(ConfigError, match="no class other than the target"):
        poison_dataset(data, grid, PoisonConfig(sources=[0], target=0), seed=0)


def test_clean_label_poisons_target_images_only_and_keeps_every_label(data) -> None:
    sig = build_trigger(TriggerConfig(kind="sig", frequency=2), TriggerContext((1, 8, 8), 0))
    cfg = PoisonConfig(rate=0.05, target=3, mode="clean_label")
    p = poison_dataset(data, sig, cfg, seed=0)
    assert len(p.indices) == 50, "the rate is a fraction of the whole set"
    assert bool((data.labels[p.indices] == 3).all()) and torch.equal(p.dataset.labels, data.labels)
    assert torch.equal(p.dataset.images[p.indices], sig.apply(data.images[p.indices]))
    with pytest.raises(ConfigError, match="only 100 images are of the target class 3; lower poison.rate to at most 0.1"):
        choose_indices(data.labels, PoisonConfig(rate=0.2, target=3, mode="clean_label"), seed=0)


def test_wanet_noise_mode_warps_a_further_share_kept_at_their_labels(data) -> None:
    wanet = build_trigger(TriggerConfig(kind="wanet", grid_k=4, noise_ratio=2), TriggerContext((1, 8, 8), 0))
    p = poison_dataset(data, wanet, PoisonConfig(rate=0.05), seed=0)
    assert len(p.indices) == 50 and len(p.noise_indices) == 100
    assert not set(p.indices.tolist()) & set(p.noise_indices.tolist())
    assert torch.equal(p.dataset.labels[p.noise_indices], data.labels[p.noise_indices])
    assert not torch.equal(p.dataset.images[p.noise_indices], data.images[p.noise_indices])
    assert torch.equal(p.noise_indices, poison_dataset(data, wanet, PoisonConfig(rate=0.05), seed=0).noise_indices), "seeded"
    off = replace(wanet, noise_ratio=0.0)
    assert len(poison_dataset(data, off, PoisonConfig(rate=0.05), seed=0).noise_indices) == 0


def test_the_target_is_checked_once_where_the_indices_are_chosen(data, grid, monkeypatch: pytest.MonkeyPatch) -> None:
    import perturbd.poisoning as poisoning

    calls: list[int] = []
    monkeypatch.setattr(poisoning, "check_target", lambda cfg, n: calls.append(n))
    cfg = PoisonConfig(rate=0.05, target=3)
    poison_dataset(data, grid, cfg, seed=0)
    assert calls == [10], "choosing its own indices, poison_dataset checks the target first"
    poison_dataset(data, grid, cfg, seed=0, indices=choose_indices(data.labels, cfg, 0))
    assert calls == [10], "a run's indices come after the run's own check (preflight): not checked again"
