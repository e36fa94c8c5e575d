"""End to end on mnist5k in seconds: the backdoor is learned, the twin is clean, the run
directory is complete and reproducible."""

from __future__ import annotations

import json

import pytest

from perturbd.config import load_config
from perturbd.errors import ConfigError
from perturbd.experiment import run, run_dir_for

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
    assert FILES <= {p.name for p in result.run_dir.iterdir()}
    assert m["attack_success_rate"] >= 0.8, m
    assert m["clean_model_asr"] <= 0.2, m
    assert m["attack_success_rate"] - m["clean_model_asr"] >= 0.6
    assert m["clean_accuracy"] >= 0.85 and m["clean_twin_accuracy"] >= 0.85
    assert m["poisoned_count"] == 100 and m["injection_rate"] == 0.1
    assert m["trigger"]["linf"] == 24 and m["stealth"]["linf_max"] <= 24
    saved = json.loads((result.run_dir / "poison_indices.json").read_text())
    assert len(saved["indices"]) == 100 and 0 not in saved["original_labels"]
    again = run(tiny_config, tmp_path)
    assert again.skipped and again.metrics == m and again.stale is None
    # a run made by other code is still reused, but says so
    env = json.loads((result.run_dir / "environment.json").read_text())
    (result.run_dir / "environment.json").write_text(json.dumps({**env, "perturbd": "0.0.1", "git_commit": "0123456789abcdef"}))
    said: list[str] = []
    old = run(tiny_config, tmp_path, log=said.append)
    assert old.skipped and old.metrics == m
    assert old.stale == said[0] and "was made by perturbd 0.0.1 at 0123456789, this is perturbd" in old.stale and "--force" in old.stale


def test_bad_input_leaves_no_run_directory(tiny_overrides, tmp_path) -> None:
    cfg = load_config(overrides=[*tiny_overrides, "poison.target=10"])
    with pytest.raises(ConfigError, match=r"poison.target must be in \[0, 9\], got 10"):
        run(cfg, tmp_path)
    assert not run_dir_for(cfg, tmp_path).exists()
    assert not [p for p in tmp_path.iterdir()] or all(not p.name.startswith(".tmp-") for p in tmp_path.iterdir())
