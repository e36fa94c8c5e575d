"""``perturbd trigger make``: a mask, its picture and the adversary's record, written whole; mistakes in one line."""

from __future__ import annotations

import json

import pytest

from perturbd.triggers import Trigger


def test_cli_trigger_make_writes_a_mask_whose_reported_rate_is_real(cli, fast, tmp_path) -> None:
    out = tmp_path / "m" / "mask.safetensors"
    sets = [a for s in [*fast, "attack.knowledge=none"] for a in ("--set", s)]
    code, stdout, err = cli("trigger", "make", *sets, "-o", str(out))
    assert code == 0, err
    assert out.is_file() and out.with_suffix(".png").is_file() and out.with_suffix(".json").is_file()
    saved = Trigger.load(out)
    info = json.loads(out.with_suffix(".json").read_text())
    assert saved.kind == "adaptive" and saved.info == info["trigger"] and info["knowledge"] == "none"
    assert saved.norms()["linf"] <= 10 and not info["data"]["test_set_used"]
    assert "fooling rate" in stdout and "lenet5 (surrogate)" in stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "trigger.budget=0.5"], "below one grey level"),
        (["--set", "attack.knowledge=none", "--set", "attack.aux_fraction=0.01"], "attack.aux_fraction"),
        (["--set", "attack.knowledge=data", "--set", "attack.surrogate=cnn28"], "victim's architecture"),
        (["-o", "mask.png"], "must end in .safetensors"),
    ],
)
def test_cli_trigger_make_mistakes_are_one_line_exit_2(cli, fast, monkeypatch, tmp_path, extra, message) -> None:
    monkeypatch.chdir(tmp_path)
    sets = [a for s in fast for a in ("--set", s)]
    code, _, err = cli("trigger", "make", *sets, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir()), "no partial output"
