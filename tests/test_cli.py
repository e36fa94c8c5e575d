"""The command line: every user mistake is one line on stderr and exit code 2, nothing on disk."""

from __future__ import annotations

import sys

import pytest

BAD = [
    (["run", "--set", "poison.rat=0.1"], "did you mean 'rate'"),
    (["run", "--set", "data.name=mnsit"], "did you mean 'mnist'"),
    (["run", "--set", "model.name=cnn29"], "did you mean 'cnn"),
    (["run", "--set", "trigger.kind=chesboard"], "did you mean 'chessboard'"),
    (["run", "--set", "poison.rate=1.5"], "poison.rate"),
    (["run", "--set", "poison.rate=-0.1"], "poison.rate"),
    (["run", "--set", "poison.target=10"], "poison.target must be in [0, 9], got 10"),
    (["run", "--set", "trigger.amplitude=-5"], "trigger.amplitude"),
    (["run", "--set", "trigger.amplitude=500"], "trigger.amplitude"),
    (["run", "--set", "trigger.kind=image", "--set", "trigger.path=/nonexistent.png"], "not found"),
    (["run", "--set", "data.name=mnist", "--set", "data.root=/nonexistent"], "data.download=true"),
    (["run", "--set", "data.name=npz:/nonexistent.npz"], "nonexistent.npz"),
    (["run", "/nonexistent.yaml"], "config file not found"),
    (
        ["run", "--set", "train.device=cuda:7"]
        if "torch" in sys.modules and not __import__("torch").cuda.is_available()
        else ["run", "--set", "train.device=tpu"],
        "train.device",
    ),
    (["trigger", "show", "gird"], "did you mean 'grid'"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_user_mistakes_exit_2_with_one_line(cli, tmp_path, args, message) -> None:
    code, out, err = cli(*args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert code == 2, (out, err)
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), "no partial output"


def test_yaml_that_is_not_a_mapping(cli, tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("[1, 2, 3]\n")
    code, _, err = cli("run", str(cfg), "--out", str(tmp_path / "runs"))
    assert code == 2 and "must hold a YAML mapping" in err and not (tmp_path / "runs").exists()


def test_datasets_and_models_list(cli) -> None:
    code, out, _ = cli("datasets")
    assert code == 0 and "mnist5k" in out and "imagefolder:PATH" in out
    code, out, _ = cli("models")
    assert code == 0 and "cnn28" in out and "preact_resnet18" in out


def test_defenses_list_each_with_its_kind_and_what_it_is(cli) -> None:
    code, out, _ = cli("defenses")
    assert code == 0
    strip = next(line for line in out.splitlines() if line.startswith("strip "))
    assert strip.split()[:3] == ["strip", "input", "STRIP"] and "input screening at inference" in " ".join(out.split())
    assert all(len(line) <= 80 for line in out.splitlines()), "wrapped to the console's width (80 when not a terminal)"


def test_trigger_show_writes_png(cli, tmp_path) -> None:
    png = tmp_path / "grid.png"
    code, _out, err = cli("trigger", "show", "grid", "--set", "trigger.amplitude=10", "-o", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_prints_summary(cli, tmp_path, tiny_overrides) -> None:
    args = [a for s in tiny_overrides for a in ("--set", s)]
    code, out, err = cli("run", *args, "--set", "train.epochs=1", "--out", str(tmp_path))
    assert code == 0, err
    assert "attack success rate" in out and "clean-model ASR" in out
    (run_dir,) = [p for p in tmp_path.iterdir()]
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["blended", "sig", "sig_ramp", "sig_ramp_wrap", "wanet", "ftrojan", "bpp", "adap_blend"])
def test_trigger_list_and_show_know_the_new_kinds(cli, tmp_path, kind: str) -> None:
    code, out, _ = cli("trigger", "list")
    assert code == 0 and kind in out.split()
    png = tmp_path / f"{kind}.png"
    code, _, err = cli("trigger", "show", kind, "-o", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_psnr_and_ssim_together_are_one_line_and_exit_2(cli, tmp_path) -> None:
    code, _, err = cli("run", "--set", "trigger.psnr=34.5", "--set", "trigger.ssim=0.9", "--out", str(tmp_path / "runs"))
    assert code == 2 and "keep one" in err and not (tmp_path / "runs").exists()
