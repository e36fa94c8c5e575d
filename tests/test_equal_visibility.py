"""experiments/equal_visibility.py: its sweep, its choice of the smallest rate, its defences, and a
tiny end-to-end pass (mnist5k, 300 images, 1 epoch) through both phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import hand_metrics, load_experiment

from perturbd.runs.folder import RunDir
from perturbd.runs.results import RunMetrics

ROOT = Path(__file__).resolve().parents[1]


def seen(asr: float) -> RunMetrics:
    """A finished run of the sweep as the summary reads it: its ASR, at PSNR 34.5 dB."""
    stealth = hand_metrics().stealth.model_copy(update={"psnr_mean": 34.5, "ssim_mean": 0.9})
    return hand_metrics(attack_success_rate=asr, clean_model_asr=0.001, accuracy_loss=0.0, stealth=stealth)


@pytest.fixture(scope="module")
def ev():
    return load_experiment("equal_visibility")


def test_the_sweep_is_kinds_by_levels_by_rates_by_seeds(ev) -> None:
    from perturbd.sweep.config import expand

    args = ev.options(["--data", "mnist", "--data-root", "/data", "--seeds", "0", "1", "--rates", "0.01", "0.001"])
    sweep = expand(ev.rate_sweep(args))
    assert len(sweep.runs) == len(ev.KINDS) * 2 * 2 * 2  # the kinds (the random control among them) × levels × rates × seeds
    assert {"ftrojan", "bpp", "adap_blend", "lf", "narcissus", "random"} <= set(ev.KINDS)
    kinds = {(c.trigger.kind, c.trigger.psnr) for c in sweep.runs}
    assert kinds == {(k, p) for k in ev.KINDS for p in (34.5, 38.9)}
    assert {c.poison.rate for c in sweep.runs} == {0.001, 0.01} and {c.data.name for c in sweep.runs} == {"mnist"}
    cifar = ev.base_config(ev.options(["--data", "cifar10", "--data-root", "/data"]))
    assert cifar["data"]["name"] == "imagefolder:/data/cifar10-jpeg"
    assert "model" not in cifar and cifar["train"] == {"epochs": 8}


def test_a_recipe_gives_every_run_its_model_and_training(ev, capsys) -> None:
    recipe = ROOT / "configs" / "cifar10-cpu-fastnet.yaml"
    base = ev.base_config(ev.options(["--data", "cifar10", "--data-root", "/data", "--recipe", str(recipe)]))
    assert base["model"] == {"name": "fastnet32_small"} and base["train"]["epochs"] == 15 and base["train"]["precision"] == "bf16"
    assert "trigger" not in base and base["poison"] == {"target": 0}  # the rows set the trigger, the axis the rate
    shorter = ev.base_config(ev.options(["--data", "cifar10", "--recipe", str(recipe), "--epochs", "5", "--set", "train.lr=0.2"]))
    assert shorter["train"]["epochs"] == 5 and shorter["train"]["lr"] == 0.2 and shorter["train"]["batch_size"] == 512
    assert ev.cli(["--recipe", "no-such-recipe.yaml", "--table-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-recipe.yaml" in err


def test_a_row_still_searching_says_so_and_gives_its_bound(ev, tmp_path) -> None:
    from perturbd.config import load_config

    args = ev.options(["--data", "mnist", "--seeds", "0", "1", "2", "--out", str(tmp_path)])
    runs = []
    for kind, rate, asrs in (("grid", 0.005, [0.95, 0.92, 0.1]), ("sig", 0.005, [0.1, 0.2, 0.95]), ("sig", 0.02, [0.95])):
        for seed, asr in enumerate(asrs):
            folder = tmp_path / f"{kind}-{rate}-{seed}"
            folder.mkdir()
            RunDir(folder).write_metrics(seen(asr))
            runs.append(
                (load_config(overrides=[f"trigger.kind={kind}", "trigger.psnr=34.5", f"poison.rate={rate}", f"seed={seed}"]), folder)
            )
    rows = {r["kind"]: r for r in ev.summarise(args, runs, specs=[])}
    assert rows["grid"]["searching"] and rows["grid"]["smallest_rate"] == 0.005 and rows["grid"]["tried"] == {"0.005": [2, 3]}
    assert rows["sig"]["searching"] and rows["sig"]["smallest_rate"] is None and rows["sig"]["above"] == 0.005, (
        "one seed of 2 % is not a majority"
    )
    table = ev.markdown(list(rows.values()))
    assert "≤ 0.500 (searching)" in table and "> 0.500 (searching)" in table and "0.5 %: 2/3" in table
    over = rows["sig"] | {"searching": False, "tried": {"0.005": [1, 3], "0.1": [1, 3]}}
    assert "| > 10.000 (none reaches) |" in ev.markdown([over]), "a row no rate of the grid passes says how far it was tried"


def test_the_table_only_reads_the_defences_run_so_far(ev, tmp_path) -> None:
    from perturbd.config import load_config

    args = ev.options(["--data", "mnist", "--seeds", "0", "1", "--rates", "0.005", "--table-only", "--out", str(tmp_path)])
    runs = []
    for seed in (0, 1):
        folder = tmp_path / "rates" / f"grid-{seed}"
        folder.mkdir(parents=True)
        RunDir(folder).write_metrics(seen(0.99))
        runs.append((load_config(overrides=["trigger.psnr=34.5", "poison.rate=0.005", f"seed={seed}"]), folder))
    (row,) = ev.summarise(args, runs, specs=[])
    assert "strip" not in row and "–" in ev.markdown([row]).splitlines()[2], "nothing defended yet: nothing run, nothing shown"
    defended = tmp_path / "defended" / "grid-0"
    defended.mkdir(parents=True)
    reports = [
        {"name": "strip", "metrics": {"auroc": 0.8}},
        {"name": "neural_cleanse", "metrics": {"target_flagged": True, "target_anomaly_index": 3.0}},
    ]
    (defended / "defenses.json").write_text(json.dumps({"defenses": reports}))
    (row,) = ev.summarise(args, runs, specs=[])
    assert row["strip"] == 0.8 and row["nc_flagged_seeds"] == 1 and row["defended_seeds"] == 1
    assert "1/1 (index 3.00); defences: 1 of 2 seeds so far" in ev.markdown([row])
    (defended / ev.RETRAINED).write_text(json.dumps({"retrained": {"attack_success_rate": 0.87}, "stored": {"attack_success_rate": 0.99}}))
    (row,) = ev.summarise(args, runs, specs=[])
    assert row["retrained_seeds"] == 1 and "1 defended on a retrain (ASR 87.0 %)" in ev.markdown([row])


def test_defences_come_from_the_matrix_file_and_params_override_them(ev) -> None:
    specs = {s.report_name: s for s in ev.defence_specs(["neural_cleanse.epochs=3", "spectral_signature_k5.epsilon=0.2"])}
    assert {s.name for s in specs.values()} == set(ev.DEFENCES), "the four defences, nothing else"
    assert specs["spectral_signature"].params == {} and specs["activation_clustering"].params == {}, "the papers' defaults"
    assert specs["spectral_signature_k5"].params == {"components": 5, "epsilon": 0.2}, "a variant beside, under its label"
    assert specs["activation_clustering_pca"].params == {"reduction": "pca"} and specs["neural_cleanse"].params == {"epochs": 3}
    with pytest.raises(SystemExit, match="NAME.KEY=VALUE"):
        ev.defence_specs(["fine_tuning.epochs=1"])


def test_each_variant_has_its_own_column(ev) -> None:
    row = {"kind": "grid", "psnr_goal": 34.5, "smallest_rate": 0.01, "seeds": [0], "tried": {"0.01": [1, 1]}, "searching": False}
    row |= {
        "strip": 0.9,
        "spectral_signature": 0.5,
        "spectral_signature_k5": 0.99,
        "screens": ["strip", "spectral_signature", "spectral_signature_k5"],
    }
    head, _, line = ev.markdown([row]).splitlines()[:3]
    assert "| PSNR dB | STRIP | SS | SS k5 | NC flags t |" in head
    assert "| 0.90 | 0.50 | 0.99 | – |" in line


@pytest.mark.slow
def test_a_run_without_its_weights_is_trained_again_and_must_reproduce_its_numbers(ev, tmp_path) -> None:
    from perturbd.config import load_config
    from perturbd.runs.experiment import run

    cfg = load_config(overrides=["data.train_limit=300", "data.test_limit=100", "train.epochs=1", "train.threads=1", "poison.rate=0.05"])
    out = tmp_path / "rates"
    folder = run(cfg, out, twin_cache=out / ".twins").run_dir
    weights = {name: (folder / name).read_bytes() for name in RunDir.WEIGHTS}
    for name in RunDir.WEIGHTS:
        (folder / name).unlink()  # as a run committed without its weights, on another machine
    assert ev.restore_weights(folder, log=lambda m: None) == (folder, None)
    assert {name: (folder / name).read_bytes() for name in RunDir.WEIGHTS} == weights
    assert not (out / ".retrained" / folder.name).exists(), "the scratch run is removed once its weights are moved"

    for name in RunDir.WEIGHTS:
        (folder / name).unlink()
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps(metrics | {"attack_success_rate": metrics["attack_success_rate"] + 0.01}))
    with pytest.raises(SystemExit, match="does not reproduce its stored run: attack_success_rate .*--defend-retrained"):
        ev.restore_weights(folder, log=lambda m: None)
    assert not any((folder / name).exists() for name in RunDir.WEIGHTS), "weights that do not reproduce are not put in"
    # --defend-retrained: the retrain (kept by the refusal, not trained a third time) is defended, and said to be
    source, record = ev.restore_weights(folder, other_ok=True, log=lambda m: None)
    assert source == out / ".retrained" / folder.name and all((source / name).is_file() for name in RunDir.WEIGHTS)
    assert record["stored"]["attack_success_rate"] == record["retrained"]["attack_success_rate"] + 0.01
    assert record["run"] == folder.name and record["cpu"]
    specs = ev.defence_specs(
        ["strip.overlays=2", "strip.n_overlay=8", "strip.n_calibration=8", "neural_cleanse.epochs=1", "neural_cleanse.n_clean=16"]
    )
    dest = ev.defend(folder, tmp_path / "defended", specs, other_ok=True)
    assert json.loads((dest / ev.RETRAINED).read_text()) == record and (dest / "defenses.json").is_file()
    assert ev.defence_facts(dest)["retrained_asr"] == record["retrained"]["attack_success_rate"]
    assert not source.exists(), "the retrain is removed once defended"


@pytest.mark.slow
def test_both_phases_on_a_tiny_slice(ev, tmp_path) -> None:
    rows = ev.main([
        "--data", "mnist5k", "--kinds", "grid", "wanet", "--psnr", "34.5", "--rates", "0.05", "--seeds", "0", "--epochs", "1",
        "--workers", "1", "--goal-asr", "0", "--set", "data.train_limit=300", "--set", "data.test_limit=100", "--set", "train.threads=1",
        "--param", "strip.overlays=2", "--param", "strip.n_overlay=8", "--param", "strip.n_calibration=8",
        "--param", "neural_cleanse.epochs=1", "--param", "neural_cleanse.n_clean=16", "--out", str(tmp_path),
    ])  # fmt: skip
    assert {r["kind"] for r in rows} == {"grid", "wanet"} and all(r["smallest_rate"] == 0.05 for r in rows)
    assert all(r["strip"] is not None and r["spectral_signature"] is not None and "nc_flagged_seeds" in r for r in rows)
    assert (tmp_path / "equal_visibility.md").is_file() and json.loads((tmp_path / "equal_visibility.json").read_text())["rows"]
    again = ev.main(["--data", "mnist5k", "--kinds", "grid", "wanet", "--psnr", "34.5", "--rates", "0.05", "--seeds", "0",
                     "--epochs", "1", "--workers", "1", "--goal-asr", "0", "--set", "data.train_limit=300", "--set", "data.test_limit=100",
                     "--set", "train.threads=1",
                     "--param", "strip.overlays=2", "--param", "strip.n_overlay=8", "--param", "strip.n_calibration=8",
                     "--param", "neural_cleanse.epochs=1", "--param", "neural_cleanse.n_clean=16", "--out", str(tmp_path)])  # fmt: skip
    assert again == rows, "a rerun reuses every run and every defence"
