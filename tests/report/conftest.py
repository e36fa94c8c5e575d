"""Fake run directories (no training): the files a run writes, with chosen metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from perturbd.config import ExperimentConfig, dump_yaml
from perturbd.report.figures import samples_png, trigger_png
from perturbd.runs.rundir import write_json


def fake_run(
    out: Path, seed: int, rate: float, amplitude: float, asr: float, acc: float = 0.98, images: bool = False, trigger: dict | None = None
) -> Path:
    """A run directory as ``perturbd run`` writes it; ``trigger`` replaces the config's grid mask."""
    cfg = ExperimentConfig.model_validate(
        {"name": "fake", "seed": seed, "poison": {"rate": rate}, "trigger": trigger or {"kind": "grid", "amplitude": amplitude}}
    )
    run = out / f"{cfg.run_name}-{cfg.hash()}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    write_json(
        run / "metrics.json",
        {
            "config_hash": cfg.hash(),
            "seed": seed,
            "setting": "before_training",
            "knowledge": "full",
            "target": 0,
            "clean_accuracy": acc,
            "clean_twin_accuracy": 0.99,
            "accuracy_loss": 0.99 - acc,
            "attack_success_rate": asr,
            "clean_model_asr": 0.01,
            "injection_rate": rate,
            "poisoned_count": int(rate * 1000),
            "poison_set_size": 1000,
            "test_size": 500,
            "trigger": {"kind": "grid", "linf": amplitude, "l2": amplitude * 14},
            "stealth": {
                "linf_mean": amplitude,
                "linf_max": amplitude,
                "l2_mean": 1.0,
                "l2_max": 1.0,
                "psnr_mean": 50 - amplitude,
                "psnr_min": 40 - amplitude,
                "ssim_mean": 0.9,
                "ssim_min": 0.8,
            },
        },
    )
    write_json(run / "environment.json", {"perturbd": "0.1.0", "torch": torch.__version__, "device": "cpu", "git_commit": None})
    write_json(run / "timing.json", {"total": 3.0})
    (run / "log.txt").write_text("[00:00:00] a <b>log</b> line\n")
    if images:
        delta = torch.zeros(1, 28, 28)
        delta[:, ::2, ::2] = amplitude
        trigger_png(delta, run / "trigger.png", "grid")
        clean = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
        samples_png(clean, (clean.int() + 8).clamp(0, 255).to(torch.uint8), run / "samples.png")
    return run


@pytest.fixture
def make_run():
    """:func:`fake_run`, for a test that writes its own runs."""
    return fake_run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """2 amplitudes × 3 rates × 2 seeds of fake runs, plus the litter a sweep leaves (twins, tmp)."""
    out = tmp_path / "sweep"
    for seed in (0, 1):
        for amp in (6, 10):
            for rate in (0.01, 0.03, 0.1):
                fake_run(out, seed, rate, amp, asr=min(1.0, rate * amp + 0.01 * seed), images=(seed == 0 and amp == 6 and rate == 0.01))
    (out / ".twins" / "abc").mkdir(parents=True)
    (out / ".twins" / "abc" / "metrics.json").write_text("{}")
    (out / ".tmp-partial-123").mkdir()
    (out / ".tmp-partial-123" / "metrics.json").write_text("{}")
    return out


@pytest.fixture
def three_seeds(tmp_path: Path) -> Path:
    """One config, seeds 0–2, with ASR 95 %, 42 % and exactly 90 %."""
    for seed, asr in [(0, 0.95), (1, 0.42), (2, 0.9)]:
        fake_run(tmp_path, seed, 0.01, 10, asr=asr)
    return tmp_path


# one config per trigger kind; TriggerConfig.label gives grid c=6, grid c=10, patch 3px c=255,
# image mask.png, adaptive deepfool linf ξ=10 and ξ=20 (the tests spell them out)
TRIGGERS = [
    {"kind": "grid", "amplitude": 6},
    {"kind": "grid", "amplitude": 10},
    {"kind": "patch", "amplitude": 255, "size": 3},
    {"kind": "image", "path": "masks/mask.png"},
    {"kind": "adaptive", "method": "deepfool", "norm": "linf", "budget": 10},
    {"kind": "adaptive", "method": "deepfool", "norm": "linf", "budget": 20},
]
CELLS = [
    {"name": "spectral_signature", "cell": {"text": "AUROC 0.91", "value": 0.91}},
    {"name": "fine_tuning", "cell": {"text": "ASR 90→5 %", "value": 0.05, "accuracy_cost": 0.01}},
]


@pytest.fixture
def kinds(tmp_path: Path) -> Path:
    """One fake run per entry of TRIGGERS (rate 5 %, seed 0), each with a defenses.json."""
    out = tmp_path / "kinds"
    for i, trigger in enumerate(TRIGGERS):
        run = fake_run(out, 0, 0.05, 10, asr=0.5 + 0.05 * i, trigger=trigger)
        write_json(run / "defenses.json", {"defenses": CELLS})
    return out


@pytest.fixture
def self_contained():
    """A check that an HTML page embeds its images, links only to run reports, runs no script."""

    def check(text: str) -> bool:
        srcs = re.findall(r'(?:src|href)="([^"]+)"', text)
        return all(s.startswith("data:image/png;base64,") or s.endswith("report.html") for s in srcs) and "<script" not in text

    return check
