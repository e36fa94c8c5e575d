"""Every benchmark script imports and runs its quick mode on tiny data (timings are not checked)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# benchmark module → (perturbd module it measures, extra arguments that make --quick tiny)
CASES = {
    "bench_train": ("perturbd.train", ["--limit", "256", "--workers", "0"]),
    "bench_adaptive": (
        "perturbd.triggers.adaptive",
        ["--samples", "8", "--train-limit", "200", "--only", "deepfool", "deepfool_batched", "gradient"],
    ),
    "bench_neural_cleanse": ("perturbd.defenses.neural_cleanse", ["--epochs", "1", "--n-clean", "32", "--train-limit", "200"]),
    "bench_e2e": ("perturbd.runs.experiment", []),
    "bench_sweep": ("perturbd.sweep", []),
    "bench_models": ("perturbd.models", []),
    "bench_colour": ("perturbd.models", []),
    "bench_guard": ("perturbd.guarded", []),
    "bench_bpp": ("perturbd.triggers.bpp", []),
}


@pytest.fixture(autouse=True)
def _threads_kept() -> Iterator[None]:
    """A benchmark is an entry point and sets torch's threads (:func:`perturbd.process.tune_process`);
    run in this process, it must not leave them changed for the tests after it, whose runs must
    reproduce (tests/test_equal_visibility.py trains one again and compares the weights)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(CASES))
def test_quick_mode_writes_its_json(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dependency, extra = CASES[name]
    pytest.importorskip(dependency)
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module(f"benchmarks.{name}")
    payload = bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), *extra])
    files = [p.name for p in tmp_path.glob("*.json")]
    assert (
        len(files) == 1
        and (files[0] == f"{name}.json" or files[0].startswith(f"{name}-"))
        and files[0].endswith("-cpu.json") == (name in ("bench_train", "bench_e2e", "bench_models", "bench_colour", "bench_guard"))
    )
    written = json.loads((tmp_path / files[0]).read_text())
    assert written["benchmark"] == name == payload["benchmark"]
    assert written["machine"]["torch"] and written["machine"]["cpu_count"] >= 1 and written["machine"]["date"]
    assert "met" in written
    if name == "bench_sweep":  # the trainings' ceiling: one alone, then the workers at once
        bound = written["ceiling"]
        assert bound["workers"] >= 2 and bound["alone"]["n"] == bound["together"]["n"] == 1
        assert bound["alone"]["mean"] > 0 and bound["ceiling"] == pytest.approx(bound["together"]["mean"] / bound["alone"]["mean"])
        for contestant, series in written["series"].items():  # where each contestant's seconds went
            (spent,) = written["breakdown"][contestant]
            assert spent["wall"] == pytest.approx(series["values"][0]) and spent["workers"] == (
                1 if contestant == "sequential" else bound["workers"]
            )
            assert 0 < spent["training"] < spent["run_seconds"] and spent["outside_training"] == pytest.approx(
                spent["run_seconds"] - spent["training"]
            )
            assert 0 < spent["occupancy"] <= 1 and spent["occupancy"] == pytest.approx(
                spent["run_seconds"] / (spent["wall"] * spent["workers"])
            )
    if name == "bench_models":  # the arithmetic ceiling: training FLOPs per image against the fp32 matmul rate
        (model,) = written["sizes"]
        assert written["sizes"][model]["train_flops"] > 2 * written["sizes"][model]["forward_macs"] > 0
        assert written["matmul_peak_gflops"] > 0 and all(v > 0 for v in written["share_of_matmul_peak"].values())
    if name in ("bench_adaptive", "bench_neural_cleanse"):
        ceiling = written["batching_ceiling"]
        assert ceiling["batch_large"] > ceiling["batch_small"] >= 1
        assert ceiling["seconds_per_image_small"] > 0 and ceiling["seconds_per_image_large"] > 0 and ceiling["ceiling"] > 0


def test_e2e_children_are_told_where_the_data_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.bench_e2e")
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "cifar10-jpeg").mkdir()
    import torch

    todo = bench.experiments(bench.options(["--data-root", str(tmp_path), "--cifar"]), torch.device("cpu"))
    assert set(todo) == {"demo", "mnist", "cifar10"}
    assert f"data.root={tmp_path}" in todo["mnist"]
    assert f"data.name=imagefolder:{tmp_path / 'cifar10-jpeg'}" in todo["cifar10"]


def test_bench_models_times_its_models_in_training_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a model's multiply-accumulates runs it in eval mode; the timed steps must not."""
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.bench_models")
    import torch

    seen: list[bool] = []
    real = bench.get_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, _: seen.append(m.training))
        return model

    monkeypatch.setattr(bench, "get_model", spy)
    sizes = bench.sizes_of("cnn32", (3, 32, 32))
    assert sizes["parameters"] > 0 and sizes["forward_macs"] > 0 and seen == [False]
    seen.clear()
    step = bench.trainer("cnn32", (3, 32, 32), "fp32", 4, torch.device("cpu"), 0)
    step()
    assert seen == [True]


def test_bench_colour_picks_from_the_frontier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.bench_colour")
    means = {
        "slow_better": {"seconds": 700.0, "clean_accuracy": 0.87},
        "fast": {"seconds": 300.0, "clean_accuracy": 0.80},
        "beaten": {"seconds": 710.0, "clean_accuracy": 0.86},  # slower and less accurate than slow_better
        "near_fast": {"seconds": 320.0, "clean_accuracy": 0.82},
    }
    assert bench.frontier(means) == ["slow_better", "fast", "near_fast"]
    assert bench.pick(means, slack=1.1) == "near_fast"  # within 1.1× of the fastest, more accurate
    assert bench.pick(means, slack=3.0) == "slow_better"
    sets = bench.overrides(bench.options(["--data-root", "/d", "--epochs", "3"]), "cnn32", 2)
    assert sets[:2] == ["model.name=cnn32", "seed=2"] and "train.epochs=3" in sets and "data.name=imagefolder:/d/cifar10-jpeg" in sets
