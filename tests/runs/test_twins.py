"""Clean models trained once: in memory for a run, on disk for a sweep, keyed by what trains them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import perturbd.runs.twins as twins_module
from perturbd.config import load_config
from perturbd.data import load_data
from perturbd.models import get_model, save_model
from perturbd.provenance import code_digest
from perturbd.runs.twins import TwinStore, twin_key

CPU = torch.device("cpu")


@pytest.fixture
def fast(synthetic_overrides: list[str]) -> list[str]:
    return [*synthetic_overrides, "data.train_limit=300"]


def _setup(fast: list[str]):
    cfg = load_config(overrides=fast)
    return cfg, load_data(cfg.data, cfg.seed).train


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_trains_a_clean_model_once_and_a_store_shares_it_across_runs(fast, tmp_path: Path) -> None:
    cfg, train = _setup(fast)
    first = TwinStore(tmp_path)
    a = first.clean_model(cfg, train, CPU)
    assert a.seconds > 0 and (tmp_path / twin_key(cfg, train, CPU) / "model.safetensors").is_file()
    assert first.clean_model(cfg, train, CPU).model is a.model, "memo: the same object, not trained again"
    b = TwinStore(tmp_path).clean_model(cfg, train, CPU)
    assert b.seconds == 0.0 and "reused" in b.source and _same(a.model, b.model)
    alone = TwinStore().clean_model(cfg, train, CPU)
    assert alone.seconds > 0 and _same(a.model, alone.model), "a stored twin equals a freshly trained one"


def test_the_key_names_what_trains_the_model_and_not_how(fast, tmp_path: Path) -> None:
    cfg, train = _setup(fast)
    key = twin_key(cfg, train, CPU)
    assert twin_key(load_config(overrides=[*fast, "train.device=auto"]), train, CPU) == key, "the device is named by its kind"
    before = torch.get_num_threads()
    try:
        one, two = (torch.set_num_threads(n) or twin_key(cfg, train, CPU) for n in (1, 2))
    finally:
        torch.set_num_threads(before)
    assert one != two, "the thread count it trains with changes a CPU model's float results"
    assert twin_key(load_config(overrides=[*fast, "seed=1"]), train, CPU) != key
    assert twin_key(load_config(overrides=[*fast, "train.lr=0.1"]), train, CPU) != key
    assert twin_key(cfg, train.subset(torch.arange(200)), CPU) != key
    assert len(code_digest()) == 16


def test_twins_of_other_code_or_device_are_not_reused(fast, tmp_path: Path, monkeypatch) -> None:
    cfg, train = _setup(fast)
    key = twin_key(cfg, train, CPU)
    monkeypatch.setattr(twins_module, "code_digest", lambda: "another-version")
    assert twin_key(cfg, train, CPU) != key
    monkeypatch.undo()
    monkeypatch.setattr(twins_module, "device_kind", lambda device: "cuda:NVIDIA H200")
    assert twin_key(cfg, train, CPU) != key
    monkeypatch.undo()
    monkeypatch.setattr(twins_module, "cpu_name", lambda: "Another CPU (avx2 amx_bf16)")
    assert twin_key(cfg, train, CPU) != key, "another CPU's kernels give other numbers"


def test_the_cpu_is_named_by_its_model_and_the_instruction_sets_that_pick_kernels() -> None:
    from perturbd.provenance import KERNEL_FLAGS, cpu_name

    name = cpu_name()
    model, _, isa = name.rpartition(" (")
    assert model and isa.endswith(")") and twins_module.device_kind(CPU) == f"cpu:{name}"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])
        named = [f for f in KERNEL_FLAGS if f in flags]
        assert not named or isa[:-1].split() == named, "without any of them: the machine's architecture"


def test_a_corrupt_stored_twin_is_retrained(fast, tmp_path: Path) -> None:
    cfg, train = _setup(fast)
    TwinStore(tmp_path).clean_model(cfg, train, CPU)
    (tmp_path / twin_key(cfg, train, CPU) / "model.safetensors").write_bytes(b"not weights")
    again = TwinStore(tmp_path).clean_model(cfg, train, CPU)
    assert again.seconds > 0


def test_a_checkpoint_is_read_once_per_run(fast, tmp_path: Path, monkeypatch) -> None:
    ckpt = tmp_path / "pre.safetensors"
    save_model(get_model("cnn28", (1, 28, 28), 10, seed=3), ckpt)
    cfg = load_config(overrides=[*fast, "attack.setting=update", f"attack.checkpoint={ckpt}"])
    reads: list[Path] = []
    real = twins_module.build_model
    monkeypatch.setattr(twins_module, "build_model", lambda *a, **k: reads.append(Path(k["weights"])) or real(*a, **k))
    store = TwinStore()
    first = store.checkpoint(cfg, (1, 28, 28), 10)
    assert store.checkpoint(cfg, (1, 28, 28), 10) is first and reads == [ckpt]
    assert first.sha256 == twins_module.file_sha256(ckpt) and not first.model.training


def test_an_adaptive_mask_is_computed_once_for_every_injection_rate(fast, tmp_path: Path) -> None:
    from perturbd.runs.twins import mask_key
    from perturbd.triggers import Trigger

    cfg, train = _setup(fast)
    cpu = torch.device("cpu")
    key = mask_key(cfg, train, cpu)
    assert mask_key(load_config(overrides=[*fast, "poison.rate=0.2", "poison.quantize=false"]), train, cpu) == key
    adaptive = [*fast, "trigger.kind=adaptive"]
    assert mask_key(load_config(overrides=[*adaptive, "trigger.budget=12"]), train, cpu) != mask_key(
        load_config(overrides=adaptive), train, cpu
    )
    assert mask_key(load_config(overrides=[*fast, "seed=3"]), train, cpu) != key
    built: list[int] = []

    def build():
        built.append(1)
        return Trigger(torch.full((1, 28, 28), 3.0), "adaptive", {"fooling_rate_samples": 0.5}), {"knowledge": "full"}

    first, record = TwinStore(tmp_path).mask(key, build)
    again, reused = TwinStore(tmp_path).mask(key, build)
    assert built == [1] and torch.equal(first.delta, again.delta) and again.info == first.info
    assert record == {"knowledge": "full"} and reused["reused_from"].endswith(key)
