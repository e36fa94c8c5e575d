"""Defence parameters on the command line (issue 40): `-p NAME.KEY=VALUE` sets one defence's,
`-p KEY=VALUE` every defence's given; each checked against the defence's Params before any work,
a mistake one line and exit 2 (a misspelt key or name with a suggestion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perturbd.cli.app import defense_params
from perturbd.errors import ConfigError


def test_named_and_shared_parameters() -> None:
    got = defense_params(["neural_cleanse", "strip"], ["neural_cleanse.epochs=3", "seed=4", "strip.blend=average"])
    assert got == {"neural_cleanse": {"epochs": 3, "seed": 4}, "strip": {"seed": 4, "blend": "average"}}
    assert defense_params(["strip"], None) == {"strip": {}}
    assert defense_params(["update_audit"], ["nc_epochs=2"]) == {"update_audit": {"nc_epochs": 2}}, "the audit's, bare"


@pytest.mark.parametrize(
    "params,message",
    [
        (["neural_cleanse.epoch=3"], "unknown parameter 'epoch' for defense 'neural_cleanse'; did you mean 'epochs'?"),
        (["neural_cleanse.epochs=0"], "neural_cleanse.epochs must be in [1, 100000], got 0"),
        (["neural_cleanse.epochs=many"], "neural_cleanse.epochs must be in [1, 100000], got 'many'"),
        (["neural_clense.epochs=3"], "unknown defense 'neural_clense'; did you mean 'neural_cleanse'?"),
        (["strip.frr=0.1"], "-p strip.frr=0.1: 'strip' is not among the defences given (neural_cleanse); add --defense strip"),
        (["epochs"], "-p takes NAME.KEY=VALUE (one defence) or KEY=VALUE (every defence given), got 'epochs'"),
    ],
)
def test_a_mistake_is_one_line_before_any_work(cli, run_dir: Path, tmp_path: Path, params: list[str], message: str) -> None:
    out = tmp_path / "defended"
    args = [a for p in params for a in ("-p", p)]
    code, said, err = cli("defend", str(run_dir), "-d", "neural_cleanse", *args, "--out", str(out))
    assert (code, said) == (2, "") and err.strip() == f"error: {message}", err
    assert not out.exists(), "no output"
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        defense_params(["neural_cleanse"], ["neural_cleanse.epoch=3"])


def test_a_shared_key_one_defence_lacks_names_the_fix(cli, run_dir: Path, tmp_path: Path) -> None:
    code, _, err = cli("defend", str(run_dir), "-d", "neural_cleanse", "-d", "strip", "-p", "epochs=2", "--out", str(tmp_path / "d"))
    assert code == 2 and "'strip' has no parameter 'epochs'; write -p neural_cleanse.epochs=2 for one" in err, err
    code, _, err = cli("audit", str(run_dir), str(run_dir), "-p", "update_audit.nc_epoch=2")
    assert code == 2 and "did you mean 'nc_epochs'?" in err and len(err.strip().splitlines()) == 1, err


def test_each_defence_runs_with_its_own_parameters(cli, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "defended"
    code, said, err = cli(
        "defend", str(run_dir), "-d", "neural_cleanse", "-d", "strip",
        "-p", "neural_cleanse.epochs=2", "-p", "neural_cleanse.batch_size=4", "-p", "neural_cleanse.n_clean=50", "-p", "seed=3",
        "-p", "strip.overlays=4", "-p", "strip.n_overlay=40", "-p", "strip.n_calibration=20",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0 and "neural_cleanse" in said and "strip" in said, err
    reports = {r["name"]: r["params"] for r in json.loads((out / "defenses.json").read_text())["defenses"]}
    assert (reports["neural_cleanse"]["epochs"], reports["neural_cleanse"]["batch_size"], reports["neural_cleanse"]["n_clean"]) == (
        2,
        4,
        50,
    )
    assert (reports["strip"]["overlays"], reports["strip"]["n_overlay"], reports["strip"]["n_calibration"]) == (4, 40, 20)
    assert reports["neural_cleanse"]["seed"] == reports["strip"]["seed"] == 3, "a bare key: every defence given"
