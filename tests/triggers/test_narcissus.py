"""Narcissus: it lowers the surrogate's target-class loss, keeps its budget after rounding, leaves
the adversary's model untouched, is seeded, magnifies only at test time, and runs as the paper's
clean-label attack through the adversary's path under knowledge ``none``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import perturbd
from perturbd.config import TriggerConfig, load_config
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError, DataError
from perturbd.runs.experiment import run
from perturbd.triggers import Trigger, TriggerContext, build_trigger
from perturbd.triggers.narcissus import Magnified

CLASSES = tuple(str(i) for i in range(10))
SHAPE = (1, 28, 28)
TINY = {"samples": 16, "warmup_epochs": 0, "epochs": 10, "batch_size": 8}


@pytest.fixture
def ctx(small_cnn) -> TriggerContext:
    images = torch.randint(0, 256, (60, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    samples = ImageDataset(images, torch.arange(60) % 3, CLASSES, "tiny")  # 20 images of the target class 0
    return TriggerContext(SHAPE, 0, 0, small_cnn(0), samples)


def _loss(model: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(to_float01(images)), torch.zeros(len(images), dtype=torch.long)))


def test_the_trigger_lowers_the_surrogates_target_class_loss_on_target_images(ctx) -> None:
    trig = build_trigger(TriggerConfig(kind="narcissus", lr=0.1, **TINY), ctx)
    target_images = ctx.samples.images[ctx.samples.labels == 0]
    clean, poisoned = _loss(ctx.model, target_images), _loss(ctx.model, trig.apply(target_images))
    noise = Trigger(trig.delta.abs().max() * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).sign(), "noise")
    assert poisoned < clean - 0.01 and poisoned < _loss(ctx.model, noise.apply(target_images)) - 0.01, (clean, poisoned)
    assert trig.info["target_loss"] < trig.info["target_loss_clean"] and trig.info["samples"] == 16
    assert trig.additive and trig.kind == "narcissus" and trig.info["test_magnification"] == 1.0


def test_the_budget_holds_on_every_poisoned_uint8_image_and_the_warm_up_trains_a_copy(ctx) -> None:
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    trig = build_trigger(TriggerConfig(kind="narcissus", budget=7.5, lr=0.1, **{**TINY, "warmup_epochs": 1}), ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items()), "the adversary's model is left as it was"
    assert torch.equal(trig.delta, torch.round(trig.delta)) and float(trig.delta.abs().max()) == 7.0, "floor(ξ) after rounding"
    images = torch.randint(0, 256, (32, *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    assert float((trig.apply(images).double() - images.double()).abs().max()) <= 7.0
    assert trig.info["warmup_epochs"] == 1 and trig.norms()["linf"] == 7.0


def test_same_seed_same_trigger(ctx) -> None:
    cfg = TriggerConfig(kind="narcissus", **TINY)
    first, again = build_trigger(cfg, ctx), build_trigger(cfg, ctx)
    assert torch.equal(first.delta, again.delta) and first.info["target_loss"] == again.info["target_loss"]
    other = build_trigger(cfg, TriggerContext(SHAPE, 1, 0, ctx.model, ctx.samples))
    assert not torch.equal(first.delta, other.delta), "another seed: other images in another order"


def test_test_time_magnification_strengthens_only_the_tested_trigger(ctx, tmp_path) -> None:
    plain = build_trigger(TriggerConfig(kind="narcissus", lr=0.1, **TINY), ctx)
    trig = build_trigger(TriggerConfig(kind="narcissus", lr=0.1, test_magnification=3, **TINY), ctx)
    assert isinstance(trig, Magnified) and trig.magnification == 3 and torch.equal(trig.delta, plain.delta)
    images = torch.full((4, *SHAPE), 100, dtype=torch.uint8)
    assert torch.equal(trig.poison_copies(images, 0), plain.apply(images)), "poisoned images carry δ"
    assert torch.equal(trig.apply(images).to(torch.int16) - 100, (3 * plain.delta).round().to(torch.int16).expand(4, *SHAPE))
    trig.save(tmp_path / "n.safetensors")
    back = Trigger.load(tmp_path / "n.safetensors")
    assert type(back) is Magnified and back.magnification == 3 and torch.equal(back.apply(images), trig.apply(images))
    x, y = images[:, 0].numpy(), np.zeros(4, dtype=np.int64)  # every image of the target: clean label poisons them all
    out = perturbd.poison(x, y, back, rate=1.0, target=0, mode="clean_label")
    assert np.array_equal(out.x, plain.apply(images)[:, 0].numpy()) and np.array_equal(out.y, y)
    with pytest.raises(ConfigError, match="not an additive mask"):
        trig.mask()


def test_mistakes_are_one_line(ctx) -> None:
    with pytest.raises(ConfigError, match=r"trigger.norm.*'linf'"):
        load_config(overrides=["trigger.kind=narcissus", "trigger.norm=l2"])
    with pytest.raises(ConfigError, match=r"trigger.test_magnification.*greater than or equal to 1"):
        load_config(overrides=["trigger.kind=narcissus", "trigger.test_magnification=0.5"])
    with pytest.raises(ConfigError, match="computed from a model"):
        build_trigger(TriggerConfig(kind="narcissus"), TriggerContext(SHAPE, 0))
    few = ImageDataset(ctx.samples.images[:4], torch.tensor([0, 1, 2, 3]), CLASSES, "few")
    with pytest.raises(DataError, match=r"1 image\(s\) of the target class 0; Narcissus optimises on at least 2"):
        build_trigger(TriggerConfig(kind="narcissus", **TINY), TriggerContext(SHAPE, 0, 0, ctx.model, few))


def test_a_clean_label_run_without_knowledge_trains_it_on_the_surrogate(synthetic_overrides, tmp_path) -> None:
    from perturbd.runs.saved import load_inputs

    sets = ["data.train_limit=600", "data.test_limit=200", "attack.knowledge=none", "attack.surrogate_steps=10", "poison.target=3",
            "poison.mode=clean_label", "poison.rate=0.05", "trigger.kind=narcissus", "trigger.samples=20", "trigger.epochs=8",
            "trigger.warmup_epochs=1", "trigger.batch_size=4", "trigger.lr=0.1", "trigger.test_magnification=3"]  # fmt: skip
    result = run(load_config(overrides=[*synthetic_overrides, *sets]), tmp_path)
    folder, m = result.run_dir, result.metrics
    adversary = json.loads((folder / "adversary.json").read_text())
    assert adversary["knowledge"] == "none" and adversary["model"]["surrogate"] and 2 <= adversary["trigger"]["samples"] <= 20
    saved = json.loads((folder / "poison_indices.json").read_text())
    assert set(saved["original_labels"]) == {3} and len(saved["indices"]) == m.poisoned_count > 0
    trig = Trigger.load(folder / "trigger.safetensors")
    assert type(trig) is Magnified and trig.magnification == 3
    assert m.stealth.linf_max <= 16 < m.trigger.linf, "poisoned images carry δ (ξ = 16); the test applies 3δ"
    assert 0 <= m.attack_success_rate <= 1 and type(load_inputs(folder).trigger) is Magnified
