"""The source registry, name resolution, stratified limits, status lines and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perturbd.config import DataConfig
from perturbd.data import (
    DataSplit,
    ImageDataset,
    get_source,
    list_sources,
    load_data,
    register_source,
    source_status,
    sources,
    stratified_indices,
    to_float01,
)
from perturbd.errors import ConfigError, DataError
from perturbd.registry import Registry

BUILTIN = ["mnist5k", "mnist", "fashion-mnist", "cifar10", "svhn", "gtsrb", "synthetic", "synthetic-rgb"]


def test_every_documented_source_is_registered() -> None:
    names = list_sources()
    for name in [*BUILTIN, "imagefolder:PATH", "npz:PATH"]:
        assert name in names
    assert names == sorted(names)


def test_list_sources_filters_by_pattern() -> None:
    assert list_sources("synthetic*") == ["synthetic", "synthetic-rgb"]
    assert list_sources("npz") == ["npz:PATH"]
    assert list_sources("imagefolder:*") == ["imagefolder:PATH"]
    assert list_sources("nothing*") == []


def test_reexports_from_dataset() -> None:
    assert ImageDataset.__module__ == "perturbd.data.dataset"
    assert DataSplit.__module__ == "perturbd.data.dataset"
    assert to_float01(torch.tensor([255], dtype=torch.uint8)).item() == 1.0


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown data source 'mnsit'; did you mean 'mnist'\?"):
        load_data(DataConfig(name="mnsit"))
    with pytest.raises(ConfigError, match="did you mean 'imagefolder'"):
        get_source("imagefoldr:/x")


def test_parametrised_source_without_path_says_how_to_write_it() -> None:
    for name in ("imagefolder", "imagefolder:", "imagefolder: "):
        with pytest.raises(ConfigError, match="write 'imagefolder:PATH'"):
            load_data(DataConfig(name=name))
    with pytest.raises(ConfigError, match="write 'npz:PATH'"):
        get_source("npz")


def test_plain_source_refuses_an_argument() -> None:
    with pytest.raises(ConfigError, match="'mnist' takes no ':' argument, got 'mnist:x'"):
        get_source("mnist:x")


def test_argument_is_split_on_the_first_colon() -> None:
    source, arg = get_source("imagefolder:C:/data/pets")
    assert source.name == "imagefolder" and arg == "C:/data/pets"


def test_source_status_is_one_short_line_for_every_source(tmp_path: Path) -> None:
    for shown in list_sources():
        line = source_status(shown.replace("PATH", str(tmp_path / "absent")), tmp_path)
        assert isinstance(line, str) and line and "\n" not in line
        assert line.split(" ")[0].rstrip(":") in {"present", "missing", "embedded", "needs", "unusable"}
    assert source_status("mnist5k", tmp_path).startswith("embedded")
    assert source_status("imagefolder:PATH", tmp_path) == "needs a path: your images in PATH/{train,test}/<class>/"
    assert source_status("mnist", tmp_path) == (
        f"missing: no MNIST/raw under {tmp_path.resolve()}; --set data.download=true or data.root=DIR"
    )
    assert "--set data.download=true" in source_status("cifar10", tmp_path)


def test_register_source_adds_a_loader_and_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "SOURCES", Registry("data source"))
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])

    @register_source("tiny", status=lambda req: "embedded (tiny)", summary="four images")
    def tiny(req: sources.SourceRequest) -> DataSplit:
        return sources.make_split(req.name, x, y, x, y, ("a", "b"))

    assert list_sources() == ["tiny"]
    assert source_status("tiny", Path(".")) == "embedded (tiny)"
    assert load_data(DataConfig(name="tiny")).train.classes == ("a", "b")
    with pytest.raises(ValueError, match="already registered"):
        register_source("tiny", status=lambda req: "")(tiny)
    with pytest.raises(ValueError, match="cannot contain ':'"):
        register_source("a:b", status=lambda req: "")


# --------------------------------------------------------------------------- stratified limits


def test_stratified_indices_gives_exact_per_class_counts() -> None:
    labels = torch.arange(1000) % 10
    idx = stratified_indices(labels, 100, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert len(set(idx.tolist())) == 100 and torch.equal(idx, idx.sort().values)


def test_stratified_indices_keeps_proportions_with_largest_remainders() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    idx = stratified_indices(labels, 15, torch.Generator().manual_seed(1))
    # exact shares 9, 4.5, 1.5: floors 9, 4, 1 and one left over for a class with remainder .5
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts[0] == 9 and sum(counts) == 15 and sorted(counts[1:]) in ([2, 4], [1, 5])


def test_load_data_limits_are_stratified_and_seeded() -> None:
    cfg = DataConfig(name="synthetic", train_limit=100, test_limit=30)
    a, b, c = load_data(cfg, seed=0), load_data(cfg, seed=0), load_data(cfg, seed=1)
    assert len(a.train) == 100 and len(a.test) == 30
    assert a.train.counts().tolist() == [10] * 10 and a.test.counts().tolist() == [3] * 10
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.classes == load_data(DataConfig(name="synthetic")).train.classes


def test_limit_keeps_the_original_order() -> None:
    full = load_data(DataConfig(name="synthetic"))
    part = load_data(DataConfig(name="synthetic", train_limit=50), seed=3)
    # every kept image appears in the full set, in the same relative order
    where = {x.numpy().tobytes(): i for i, x in enumerate(full.train.images)}
    positions = [where[x.numpy().tobytes()] for x in part.train.images]
    assert positions == sorted(positions)


def test_limit_above_the_set_size_keeps_everything() -> None:
    split = load_data(DataConfig(name="synthetic", test_limit=10_000))
    assert len(split.test) == 500


# --------------------------------------------------------------------------- cache


def test_cache_dir_follows_the_environment(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sources.cache_dir() == cache
    monkeypatch.delenv("PERTURBD_CACHE")
    assert sources.cache_dir() == Path("~/.cache/perturbd/cache").expanduser()


def test_cache_round_trip_and_unreadable_file_is_rebuilt(cache: Path) -> None:
    split = load_data(DataConfig(name="synthetic-rgb"))
    path = sources.cache_file("demo", "key")
    sources.write_cache(path, split)
    again = sources.read_cache(path, "demo")
    assert again is not None and torch.equal(again.train.images, split.train.images)
    assert again.train.classes == split.train.classes and again.train.name == "demo"
    path.write_bytes(b"not a torch file")
    assert sources.read_cache(path, "demo") is None
    calls = []
    built = sources.cached_split(path, "demo", lambda: calls.append(1) or split)
    assert calls == [1] and built is split
    assert sources.read_cache(path, "demo") is not None  # rewritten


def test_cache_file_names_differ_by_key(cache: Path) -> None:
    a, b = sources.cache_file("x", "/root/a"), sources.cache_file("x", "/root/b")
    assert a != b and a.parent == cache and a.name.startswith("x-") and a.suffix == ".pt"


def test_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PERTURBD_CACHE", str(blocker / "sub"))  # a folder inside a file: cannot exist
    split = load_data(DataConfig(name="mnist5k"))
    assert len(split.train) == 4000
    assert "cannot write cache file" in caplog.text


def test_data_error_is_one_line() -> None:
    with pytest.raises(DataError) as info:
        load_data(DataConfig(name="npz:/nonexistent/file.npz"))
    assert "\n" not in str(info.value) and "/nonexistent/file.npz" in str(info.value)
