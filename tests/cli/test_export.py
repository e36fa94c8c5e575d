"""``perturbd export``: a folder of PNGs and a manifest; every mistake one line, exit 2, nothing written."""

from __future__ import annotations

import shutil

import pytest
from conftest import SYNTHETIC

from perturbd.config import load_config
from perturbd.runs.experiment import run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-second run on the synthetic bars: 240 victim images, 24 poisoned."""
    sets = [*SYNTHETIC, "data.train_limit=300", "data.test_limit=100", "poison.rate=0.1"]
    return run(load_config(overrides=sets), tmp_path_factory.mktemp("runs")).run_dir


def test_export_writes_the_folder(cli, run_dir, tmp_path) -> None:
    code, out, err = cli("export", str(run_dir), "--to", str(tmp_path / "data"))
    assert code == 0, err
    assert "training images (24 poisoned)" in out
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"train", "test", "manifest.csv", "trigger.npy", "trigger.png"}
    assert len(list((tmp_path / "data" / "train").rglob("*.png"))) == 240 and len(list((tmp_path / "data" / "test").rglob("*.png"))) == 100


@pytest.mark.parametrize("case", ["not a run", "target not empty", "unquantized"])
def test_mistakes_exit_2(cli, run_dir, tmp_path, case) -> None:
    source, dest = run_dir, tmp_path / "data"
    if case == "not a run":
        source = tmp_path
    elif case == "target not empty":
        dest.mkdir()
        (dest / "x.txt").write_text("mine")
    else:
        source = shutil.copytree(run_dir, tmp_path / "run")
        config = source / "config.yaml"
        config.write_text(config.read_text().replace("quantize: true", "quantize: false"))
    code, _, err = cli("export", str(source), "--to", str(dest))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not dest.exists() or [p.name for p in dest.iterdir()] == ["x.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    if case == "unquantized":
        assert "quantize=false" in err
