"""End to end on mnist5k in seconds: the backdoor is learned, the twin is clean, the run
directory is complete and reproducible."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import perturbd.runs.experiment as experiment
import perturbd.runs.twins as twins
from perturbd.config import load_config
from perturbd.errors import ConfigError
from perturbd.models import get_model, save_model
from perturbd.provenance import cpu_name
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir
from perturbd.runs.rundir import run_dir_for

FILES = {
    "config.yaml",
    "metrics.json",
    "trigger.safetensors",
    "trigger.png",
    "samples.png",
    "model.safetensors",
    "clean_model.safetensors",
    "poison_indices.json",
    "log.txt",
    "environment.json",
    "adversary.json",
    "timing.json",
}


def test_backdoor_is_learned_and_twin_is_clean(tiny_config, tmp_path) -> None:
    result = run(tiny_config, tmp_path)
    m = result.metrics
    assert {p.name for p in result.run_dir.iterdir()} >= FILES
    assert m.attack_success_rate >= 0.8, m
    assert m.clean_model_asr <= 0.2, m
    assert m.attack_success_rate - m.clean_model_asr >= 0.6
    assert m.clean_accuracy >= 0.85 and m.clean_twin_accuracy >= 0.85
    assert m.poisoned_count == 80 and m.injection_rate == 0.1, "10 % of the victim's 800 images (20 % held out for the adversary)"
    assert m.trigger.linf == 24 and m.stealth.linf_max <= 24
    assert RunDir(result.run_dir).metrics() == m and json.loads((result.run_dir / "metrics.json").read_text()) == m.to_json()
    saved = json.loads((result.run_dir / "poison_indices.json").read_text())
    assert len(saved["indices"]) == 80 and 0 not in saved["original_labels"]
    timing = json.loads((result.run_dir / "timing.json").read_text())
    stages = ["data", "trigger", "train_clean", "train_backdoored", "poison", "evaluate", "defenses", "write"]
    assert set(timing) == {*stages, "total"}, timing
    assert all(timing[k] >= 0 for k in stages) and timing["train_backdoored"] > 0
    assert sum(timing[k] for k in stages) == pytest.approx(timing["total"], abs=0.05), "the stages add up to the run"
    again = run(tiny_config, tmp_path)
    assert again.skipped and again.metrics == m and again.stale is None
    # a run made by other code is still reused, but says so
    env = json.loads((result.run_dir / "environment.json").read_text())
    assert env["cpu"] == cpu_name() and env["device"] == "cpu", "which CPU made the numbers"
    assert env["malloc"] in ("tuned", "system", "own", "unavailable"), "how memory was served: it changes timings, not numbers"
    (result.run_dir / "environment.json").write_text(json.dumps({**env, "perturbd": "0.0.1", "git_commit": "0123456789abcdef"}))
    said: list[str] = []
    old = run(tiny_config, tmp_path, log=said.append)
    assert old.skipped and old.metrics == m
    assert old.stale == said[0] and "was made by perturbd 0.0.1 at 0123456789, this is perturbd" in old.stale and "--force" in old.stale


def test_a_run_loads_no_heavy_module_it_does_not_use() -> None:
    """The run path (command line and experiment) loads neither torchmetrics (SSIM is perturbd's)
    nor scikit-learn until a defence runs: with torch loaded they cost a process 1.3 and 1.2 s of
    CPU (tools/check_imports.py: DEFERRED)."""
    probe = "import sys, perturbd.cli, perturbd.runs.experiment; print(sorted(m for m in ('sklearn', 'torchmetrics') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert done.stdout.split() == ["[]"], (done.stdout, done.stderr)


def test_bad_input_leaves_no_run_directory(tiny_overrides, tmp_path) -> None:
    cfg = load_config(overrides=[*tiny_overrides, "poison.target=10"])
    with pytest.raises(ConfigError, match=r"poison.target must be in \[0, 9\], got 10"):
        run(cfg, tmp_path)
    assert not run_dir_for(cfg, tmp_path).exists()
    assert not [p for p in tmp_path.iterdir()] or all(not p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_one_run_partitions_once_and_reads_its_checkpoint_once(tmp_path, monkeypatch) -> None:
    """An adaptive mask under knowledge full, in the update setting from a checkpoint: the
    partition is computed once and the checkpoint read once, though the setting's check, the
    adversary and the update all use them."""
    ckpt = tmp_path / "pre.safetensors"
    save_model(get_model("cnn28", (1, 28, 28), 10, seed=2), ckpt)
    cfg = load_config(overrides=[
        "data.name=synthetic", "data.train_limit=400", "data.test_limit=100", "train.epochs=1", "train.device=cpu",
        "trigger.kind=adaptive", "trigger.samples=20", "trigger.passes=1", "trigger.max_steps=2", "attack.knowledge=full",
        "attack.setting=update", "attack.update_size=100", "attack.update_epochs=1", f"attack.checkpoint={ckpt}", "poison.rate=0.1",
    ])  # fmt: skip
    calls = {"partition": 0, "checkpoint": 0}
    real_partition, real_build = experiment.partition, twins.build_model

    def counted_partition(*args, **kwargs):
        calls["partition"] += 1
        return real_partition(*args, **kwargs)

    def counted_build(*args, **kwargs):
        calls["checkpoint"] += kwargs.get("weights") == ckpt
        return real_build(*args, **kwargs)

    monkeypatch.setattr(experiment, "partition", counted_partition)
    monkeypatch.setattr(twins, "build_model", counted_build)
    result = run(cfg, tmp_path / "runs")
    assert calls == {"partition": 1, "checkpoint": 1}
    assert result.metrics.update is not None and result.metrics.update.pre_update_model == f"checkpoint {ckpt}"


def test_a_source_specific_attack_reports_its_sources_and_the_other_classes(synthetic_overrides, tmp_path, monkeypatch) -> None:
    from perturbd.attack import plan as plan_module

    seen: list[tuple[int, ...] | None] = []
    real = plan_module.build_trigger
    monkeypatch.setattr(plan_module, "build_trigger", lambda cfg, ctx: seen.append(ctx.sources) or real(cfg, ctx))
    cfg = load_config(overrides=[
        *synthetic_overrides, "data.train_limit=600", "data.test_limit=200", "poison.sources=[1, 2]", "poison.rate=0.05",
        "trigger.kind=adaptive", "trigger.samples=20", "trigger.passes=1", "trigger.max_steps=2", "attack.surrogate_steps=10",
    ])  # fmt: skip
    m = run(cfg, tmp_path).metrics
    assert seen == [(1, 2)], "the mask's samples come from the source classes"
    assert m.sources == [1, 2] and m.non_source_asr is not None and m.clean_model_non_source_asr is not None
    saved = json.loads((run_dir_for(cfg, tmp_path) / "poison_indices.json").read_text())
    assert set(saved["original_labels"]) <= {1, 2}
    every = run(load_config(overrides=[*synthetic_overrides, "data.train_limit=600", "data.test_limit=200", "poison.rate=0.05"]), tmp_path)
    assert every.metrics.sources is None and "non_source_asr" not in json.loads((every.run_dir / "metrics.json").read_text())


def test_evaluation_follows_train_precision(synthetic_overrides, tmp_path, monkeypatch) -> None:
    import perturbd.metrics as metrics

    asked: set[str] = set()
    real = metrics.predict
    monkeypatch.setattr(metrics, "predict", lambda *a, precision="auto", **k: asked.add(precision) or real(*a, precision=precision, **k))
    run(load_config(overrides=[*synthetic_overrides, "data.train_limit=300", "data.test_limit=100", "train.precision=fp32"]), tmp_path)
    assert asked == {"fp32"}


@pytest.mark.parametrize(
    "sets",
    [
        ["trigger.kind=blended", "poison.rate=0.05"],
        ["trigger.kind=sig", "trigger.frequency=3", "poison.mode=clean_label", "poison.rate=0.05"],
        ["trigger.kind=wanet", "trigger.psnr=30", "poison.rate=0.05", "defenses=[strip]", "trigger.grid_k=3"],
        ["trigger.kind=ftrojan", "poison.rate=0.05"],
        ["trigger.kind=bpp", "poison.rate=0.05"],
        ["trigger.kind=adap_blend", "trigger.cover_rate=0.05", "poison.rate=0.05"],
    ],
)
def test_every_new_kind_runs_end_to_end_and_its_trigger_file_loads_back(sets: list[str], synthetic_overrides, tmp_path) -> None:
    from perturbd.runs.saved import load_inputs
    from perturbd.triggers import Trigger

    cfg = load_config(overrides=[*synthetic_overrides, "data.train_limit=600", "data.test_limit=200", *sets])
    result = run(cfg, tmp_path)
    folder = result.run_dir
    assert (folder / "trigger.png").is_file() and (folder / "samples.png").is_file()
    trig = Trigger.load(folder / "trigger.safetensors")
    assert trig.kind == cfg.trigger.kind and result.metrics.trigger.linf > 0 and result.metrics.stealth.psnr_mean > 0
    saved = json.loads((folder / "poison_indices.json").read_text())
    if cfg.poison.mode == "clean_label":
        assert set(saved["original_labels"]) == {cfg.poison.target}
    extras = {"wanet": 2 * len(saved["indices"]), "adap_blend": len(saved["indices"])}  # cover_rate = poison.rate
    assert len(saved.get("noise_indices", [])) == extras.get(cfg.trigger.kind, 0)
    if cfg.trigger.psnr is not None:
        record = json.loads((folder / "adversary.json").read_text())["trigger"]
        assert abs(record["psnr_on_adversary_images"] - 30) <= 0.2 and "warp_strength" in record
        assert result.metrics.defenses and "strip" in result.metrics.defenses
    inputs = load_inputs(folder)  # rebuilt as `perturbd defend` and `perturbd export` rebuild it
    assert inputs.train is not None and type(inputs.trigger) is type(trig)
