"""``perturbd reproduce``: a finished run trained again gives the same numbers bit for bit on the
same CPU and code, gives its weights back to a run kept without them, and says so when not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perturbd.config import load_config
from perturbd.errors import ConfigError, DataError
from perturbd.provenance import cpu_name
from perturbd.runs.experiment import run
from perturbd.runs.folder import RunDir
from perturbd.runs.reproduce import REPRODUCED, reproduce, restore


@pytest.fixture
def finished(synthetic_overrides, tmp_path) -> Path:
    cfg = load_config(overrides=[*synthetic_overrides, "data.train_limit=300", "data.test_limit=100", "train.threads=1", "poison.rate=0.1"])
    return run(cfg, tmp_path / "runs").run_dir


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_a_run_trained_again_gives_its_numbers_and_its_weights_back(finished, tmp_path) -> None:
    weights = {name: (finished / name).read_bytes() for name in RunDir.WEIGHTS}
    for name in RunDir.WEIGHTS:
        (finished / name).unlink()  # as results committed without their weights
    rep = reproduce(finished, tmp_path / "again")
    assert rep.same and rep.differ == [] and rep.notes == [], rep.summary()
    assert {key: rep.retrained[key] for key in REPRODUCED} == {key: rep.stored[key] for key in REPRODUCED}
    assert rep.again.parent == tmp_path / "again" and "reproduced exactly" in rep.summary()
    restore(rep)
    assert {name: (finished / name).read_bytes() for name in RunDir.WEIGHTS} == weights, "the very model the numbers were measured on"
    assert not rep.again.exists(), "the retrain is removed once its weights are moved"


def test_a_run_that_does_not_reproduce_says_which_number_and_keeps_its_weights_out(finished, tmp_path) -> None:
    stored = json.loads((finished / "metrics.json").read_text())
    _edit(finished / "metrics.json", attack_success_rate=stored["attack_success_rate"] + 0.01)
    _edit(finished / "environment.json", cpu="Another CPU (avx2)", git_commit="0123456789abcdef")
    rep = reproduce(finished, tmp_path / "again")
    assert not rep.same and rep.differ == ["attack_success_rate"]
    assert f"attack_success_rate {stored['attack_success_rate']} (stored {stored['attack_success_rate'] + 0.01})" in rep.summary()
    code, cpu = rep.notes
    assert code.startswith(f"{finished} was made by perturbd ") and " at 0123456789, this is perturbd " in code, code
    assert cpu == f"{finished} was made on Another CPU (avx2), this is {cpu_name()}"
    record = rep.record()
    assert record["retrained"]["attack_success_rate"] + 0.01 == record["stored"]["attack_success_rate"] and record["cpu"] == cpu_name()
    weights = (finished / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="does not reproduce"):
        restore(rep)
    assert (finished / "model.safetensors").read_bytes() == weights and rep.again.is_dir()
    mtime = (rep.again / "metrics.json").stat().st_mtime_ns
    assert reproduce(finished, tmp_path / "again").again == rep.again
    assert (rep.again / "metrics.json").stat().st_mtime_ns == mtime, "a retrain made here by this code is reused, not trained again"


def test_the_retrain_never_lands_on_the_run_itself(finished) -> None:
    with pytest.raises(ConfigError, match="would be the run itself"):
        reproduce(finished, finished.parent)


def test_the_command_exits_0_when_same_1_when_not_2_for_a_mistake(cli, finished, tmp_path) -> None:
    for name in RunDir.WEIGHTS:
        (finished / name).unlink()
    code, out, err = cli("reproduce", str(finished), "--out", str(tmp_path / "again"), "--restore")
    assert code == 0, err
    assert "reproduced exactly" in err and "weights put into" in err and all((finished / name).is_file() for name in RunDir.WEIGHTS)
    assert "attack_success_rate" in out and "differs" not in out
    _edit(finished / "metrics.json", clean_accuracy=0.5)
    code, out, err = cli("reproduce", str(finished), "--out", str(tmp_path / "again"))
    assert code == 1 and "clean_accuracy" in err and "differs" in out
    code, _, err = cli("reproduce", str(tmp_path / "nothing"))
    assert code == 2 and "is not a finished run directory (no such folder)" in err and len(err.strip().splitlines()) == 1


def test_stored_numbers_another_version_wrote_are_compared_on_what_they_hold(finished, tmp_path) -> None:
    data = json.loads((finished / "metrics.json").read_text())
    del data["clean_model_asr"]
    (finished / "metrics.json").write_text(json.dumps(data | {"a_key_from_another_version": 1}))
    rep = reproduce(finished, tmp_path / "again")
    assert rep.differ == ["clean_model_asr"] and rep.stored.get("clean_model_asr") is None
    assert f"clean_model_asr {rep.retrained['clean_model_asr']} (stored None)" in rep.summary()


def test_unreadable_stored_numbers_stop_it_before_anything_is_trained(finished, tmp_path, monkeypatch) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before reading the stored numbers")

    monkeypatch.setattr("perturbd.runs.reproduce.run", no_training)
    (finished / "metrics.json").write_text("{bad json")
    with pytest.raises(DataError, match=r"^cannot read .*metrics\.json"):
        reproduce(finished, tmp_path / "again")
    assert not (tmp_path / "again").exists()
