"""The model-updating setting: the update batch, the untouched checkpoint read once, before/after metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from perturbd.attack import partition, plan_attack
from perturbd.attack.settings import Context, get_setting
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.errors import CheckpointError
from perturbd.metrics import clean_accuracy
from perturbd.models import get_model, load_model_weights, save_model
from perturbd.runs.experiment import run
from perturbd.runs.twins import TwinStore
from perturbd.train import SilentMonitor, fit

UPDATE = ["data.train_limit=600", "data.test_limit=200", "attack.setting=update", "attack.update_size=200", "attack.update_epochs=1",
          "trigger.amplitude=24", "poison.rate=0.1", "poison.target=3"]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fast(synthetic_overrides: list[str]) -> list[str]:
    return [*synthetic_overrides, *UPDATE]


@pytest.fixture(scope="module")
def split():
    return load_data(load_config(overrides=["data.name=synthetic", *UPDATE]).data, seed=0)


def test_update_from_a_checkpoint_leaves_it_byte_identical(split, fast, tmp_path: Path) -> None:
    pre = get_model("cnn28", (1, 28, 28), 10, seed=1)
    fit(pre, split.train, load_config(overrides=fast).train, seed=1)
    ckpt = tmp_path / "pre.safetensors"
    save_model(pre, ckpt, {"note": "pre-update"})
    digest, mtime = sha256(ckpt), ckpt.stat().st_mtime_ns
    cfg = load_config(overrides=[*fast, f"attack.checkpoint={ckpt}"])
    result = run(cfg, tmp_path / "runs")
    assert sha256(ckpt) == digest and ckpt.stat().st_mtime_ns == mtime
    m = result.metrics
    assert m.update is not None and m.before_update is not None
    assert m.update.checkpoint_sha256 == digest and m.update.initial_train_size is None
    assert m.poison_set_size == 200 and m.poisoned_count == 20 and m.injection_rate == pytest.approx(0.1)
    reloaded = load_model_weights(get_model("cnn28", (1, 28, 28), 10), ckpt)
    test = load_data(cfg.data, cfg.seed).test
    assert m.before_update.clean_accuracy == clean_accuracy(reloaded, test), "before = the checkpoint itself"
    for value in (m.clean_accuracy, m.clean_twin_accuracy, m.attack_success_rate, m.clean_model_asr, m.before_update.attack_success_rate):
        assert 0 <= value <= 1


def test_checkpoint_of_another_architecture_is_refused_without_output(split, fast, tmp_path: Path) -> None:
    other = tmp_path / "lenet.safetensors"
    save_model(get_model("lenet5", (1, 28, 28), 10), other)
    cfg = load_config(overrides=[*fast, f"attack.checkpoint={other}"])
    with pytest.raises(CheckpointError):
        run(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any(p for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    with pytest.raises(CheckpointError, match="not found"):
        run(load_config(overrides=[*fast, f"attack.checkpoint={tmp_path / 'nope.safetensors'}"]), tmp_path / "runs")


def test_update_without_checkpoint_trains_the_initial_model_on_the_rest(split, fast) -> None:
    cfg = load_config(overrides=[*fast, "attack.knowledge=none"])
    cpu = torch.device("cpu")
    part = partition(cfg, split.train.labels, 10)
    assert len(part.victim) == 480  # 20 % auxiliary data kept away from the victim
    twins = TwinStore()
    plan = plan_attack(cfg, split, part, cpu, twins)
    trained = get_setting("update").train(Context(cfg, split, part, plan, cpu, twins, SilentMonitor(), lambda msg: None))
    assert len(trained.poisoned.dataset) == 200 and len(trained.poisoned.indices) == 20
    assert torch.equal(trained.poisoned.indices, part.poison), "the poison the partition chose"
    assert trained.facts["update"].initial_train_size == 280 and trained.before is not None
    assert trained.seconds["train_initial"] > 0


def test_full_knowledge_update_trains_the_pre_update_model_once(split, fast, monkeypatch) -> None:
    static = [s for s in fast if not s.startswith("trigger.amplitude")]  # an adaptive mask has no amplitude
    cfg = load_config(overrides=[*static, "trigger.kind=adaptive", "trigger.samples=20", "trigger.passes=1", "trigger.max_steps=2"])
    cpu = torch.device("cpu")
    part = partition(cfg, split.train.labels, 10)
    twins = TwinStore()
    plan = plan_attack(cfg, split, part, cpu, twins)  # the adversary trains the victim's clean model on the initial images
    trained = get_setting("update").train(Context(cfg, split, part, plan, cpu, twins, SilentMonitor(), lambda msg: None))
    assert trained.seconds["train_initial"] == 0.0, "the pre-update model is the adversary's: not trained again"
