"""The model-updating setting: the update batch, the untouched checkpoint, before/after metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from perturbd.attack import plan_attack
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.errors import CheckpointError, ConfigError
from perturbd.experiment import run
from perturbd.metrics import clean_accuracy
from perturbd.models import get_model, load_model_weights, save_model
from perturbd.settings import Context, get_setting, new_model
from perturbd.train import SilentMonitor, fit
from perturbd.update import split_update

FAST = ["data.name=synthetic", "data.train_limit=600", "data.test_limit=200", "train.epochs=1", "train.batch_size=64",
        "train.device=cpu", "attack.setting=update", "attack.update_size=200", "attack.update_epochs=1",
        "trigger.amplitude=24", "poison.rate=0.1", "poison.target=3"]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def split():
    return load_data(load_config(overrides=FAST).data, seed=0)


def test_update_batch_is_new_data_disjoint_from_the_initial_training(split) -> None:
    cfg = load_config(overrides=FAST)
    initial, batch = split_update(split.train, cfg)
    assert len(batch) == 200 and len(initial) == 400
    assert not set(initial.tolist()) & set(batch.tolist())
    assert torch.equal(torch.bincount(split.train.labels[batch], minlength=10), torch.full((10,), 20)), "stratified"
    again, batch2 = split_update(split.train, cfg)
    assert torch.equal(batch, batch2) and torch.equal(initial, again), "seeded"
    with pytest.raises(ConfigError, match="attack.update_size 580"):
        split_update(split.train, load_config(overrides=[*FAST, "attack.update_size=580"]))


def test_update_from_a_checkpoint_leaves_it_byte_identical(split, tmp_path: Path) -> None:
    torch.manual_seed(1)
    pre = get_model("cnn28", (1, 28, 28), 10)
    fit(pre, split.train, load_config(overrides=FAST).train, seed=1)
    ckpt = tmp_path / "pre.safetensors"
    save_model(pre, ckpt, {"note": "pre-update"})
    digest, mtime = sha256(ckpt), ckpt.stat().st_mtime_ns
    cfg = load_config(overrides=[*FAST, f"attack.checkpoint={ckpt}"])
    result = run(cfg, tmp_path / "runs")
    assert sha256(ckpt) == digest and ckpt.stat().st_mtime_ns == mtime
    m = result.metrics
    assert m["update"]["checkpoint_sha256"] == digest and m["update"]["initial_train_size"] is None
    assert m["poison_set_size"] == 200 and m["poisoned_count"] == 20 and m["injection_rate"] == pytest.approx(0.1)
    reloaded = load_model_weights(get_model("cnn28", (1, 28, 28), 10), ckpt)
    test = load_data(cfg.data, cfg.seed).test
    assert m["before_update"]["clean_accuracy"] == clean_accuracy(reloaded, test), "before = the checkpoint itself"
    for key in ("clean_accuracy", "clean_twin_accuracy", "attack_success_rate", "clean_model_asr"):
        assert 0 <= m[key] <= 1
    assert 0 <= m["before_update"]["attack_success_rate"] <= 1


def test_checkpoint_of_another_architecture_is_refused_without_output(split, tmp_path: Path) -> None:
    other = tmp_path / "lenet.safetensors"
    save_model(get_model("lenet5", (1, 28, 28), 10), other)
    cfg = load_config(overrides=[*FAST, f"attack.checkpoint={other}"])
    with pytest.raises(CheckpointError):
        run(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any(p for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    with pytest.raises(CheckpointError, match="not found"):
        run(load_config(overrides=[*FAST, f"attack.checkpoint={tmp_path / 'nope.safetensors'}"]), tmp_path / "runs")


def test_update_without_checkpoint_trains_the_initial_model_on_the_rest(split) -> None:
    cfg = load_config(overrides=[*FAST, "attack.knowledge=none"])
    plan = plan_attack(cfg, split, torch.device("cpu"))
    assert len(plan.victim_train) == 480  # 20 % auxiliary data kept away from the victim
    ctx = Context(cfg, split, plan, torch.device("cpu"), SilentMonitor(), lambda msg: None)
    trained = get_setting("update")(ctx)
    assert len(trained.poisoned.dataset) == 200 and len(trained.poisoned.indices) == 20
    assert trained.metrics["update"]["initial_train_size"] == 280
    assert set(trained.metrics["before_update"]) == {"clean_accuracy", "attack_success_rate"}
    # the clean and the poisoned update start from one pre-update model and see the same batch but the poison
    changed = [k for k, v in trained.clean.state_dict().items() if not torch.equal(v, trained.backdoored.state_dict()[k])]
    assert changed, "the poison changes the fine-tuned weights"


def test_full_knowledge_update_reuses_the_exact_pre_update_model(split) -> None:
    cfg = load_config(overrides=[*FAST, "trigger.kind=adaptive", "trigger.samples=20", "trigger.passes=1", "trigger.max_steps=2"])
    plan = plan_attack(cfg, split, torch.device("cpu"))
    assert plan.clean_model is not None and plan.info["data"]["size"] == 400, "the adversary knows the initial data"
    initial, _ = split_update(plan.victim_train, cfg)
    ctx = Context(cfg, split, plan, torch.device("cpu"), SilentMonitor(), lambda msg: None)
    own = new_model(ctx)
    fit(own, plan.victim_train.subset(initial), cfg.train, cfg.seed)
    theirs = plan.clean_model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in own.state_dict().items())
