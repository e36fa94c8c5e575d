"""Evaluation of every defence kind through its protocol, the defender's clean set, and defences
run from an experiment config: files, matrix, errors before any work."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn as nn

from perturbd.config import DefenseSpec, load_config
from perturbd.data.dataset import ImageDataset
from perturbd.defenses import build_defense
from perturbd.defenses.base import Defense, DefenseParams, Figures, ModelInspector
from perturbd.errors import ConfigError
from perturbd.evaluation import DefenseInputs, DefenseReport, defender_clean_set, evaluate_defense, run_defenses, write_defenses
from perturbd.evaluation.harness import labelled
from perturbd.report.matrix import matrix_rows, write_matrix
from perturbd.runs.experiment import run
from perturbd.runs.rundir import run_dir_for
from perturbd.runs.saved import load_inputs
from perturbd.seeding import derived_generator, derived_seed
from perturbd.triggers import Trigger

AUDIT = {"n_clean": 300, "nc_epochs": 4, "nc_batch": 8, "uap_steps": 30, "uap_batch": 16, "epsilon": 32}


class LastLabel(Defense):
    """A model inspector that is not Neural Cleanse: flags the last label, draws nothing."""

    name: ClassVar[str] = "last_label"
    kind: ClassVar[str] = "model"
    anomaly_threshold = 2.0

    def fit(self, model: nn.Module, data: ImageDataset) -> LastLabel:
        k = data.num_classes
        self.scores_ = torch.arange(k, dtype=torch.float32) - (k - 1) + 3  # only the last above 2
        self.flagged_ = self.scores_ > self.anomaly_threshold
        self.flagged_labels_ = [k - 1]
        self.evidence_ = {"votes": list(range(k))}
        self.seconds_ = 0.0
        self.clean_used_ = len(data)
        return self

    def figures(self) -> Figures:
        return {"last_label.png": lambda path: Path(path).write_bytes(b"png")}


class PixelScreen(Defense):
    """An input screen that scores an image by its first pixel (test images carry their label
    there) and remembers what it screened."""

    name: ClassVar[str] = "pixel_screen"
    kind: ClassVar[str] = "input"
    frr = 0.01
    threshold_ = 0.5

    class Params(DefenseParams):
        seed: int | None = None

    def fit(self, model: nn.Module, data: ImageDataset) -> PixelScreen:
        self.clean_used_, self.scores_, self.flagged_, self.screened = len(data), torch.zeros(1), torch.zeros(1, dtype=torch.bool), []
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.screened.append(images[:, 0, 0, 0].clone())
        return images[:, 0, 0, 0].float()

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > 200


def _sorted_inputs(planted, seed: int = 0, sources: tuple[int, ...] | None = None) -> DefenseInputs:
    """A test set sorted by class (as image folders are), 100 images a class, label in pixels
    (0, 0, 0) and (0, 0, 1); a trigger that sets the first to 255."""
    labels = torch.arange(10).repeat_interleave(100)
    images = torch.zeros(1000, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, :2] = labels.to(torch.uint8)[:, None]
    test = ImageDataset(images, labels, tuple(str(c) for c in range(10)), "sorted")
    delta = torch.zeros(1, 28, 28)
    delta[0, 0, 0] = 255.0
    return DefenseInputs(planted.model, test, planted.clean, trigger=Trigger(delta, "patch"), target=0, seed=seed, sources=sources)


class LabelScreen(PixelScreen):
    """:class:`PixelScreen` that remembers the label (pixel (0, 0, 1)) of each image it screened."""

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.screened.append(images[:, 0, 0, 1].clone())
        return images[:, 0, 0, 0].float()


def test_a_source_specific_attack_is_screened_on_triggered_source_images(planted) -> None:
    d = LabelScreen()
    r = evaluate_defense(d, _sorted_inputs(planted, sources=(3, 4)), eval_limit=180)
    clean, triggered = (torch.bincount(s.long(), minlength=10).tolist() for s in d.screened)
    assert clean == [0] + [20] * 9, "clean images: every class but the target, as before"
    assert triggered == [0, 0, 0, 90, 90, 0, 0, 0, 0, 0], "triggered images: the source classes only"
    assert r.metrics["sources"] == [3, 4] and r.metrics["test_images"] == r.metrics["triggered_images"] == 180
    every = LabelScreen()
    evaluate_defense(every, _sorted_inputs(planted), eval_limit=180)
    assert torch.equal(every.screened[0], every.screened[1]) and torch.equal(every.screened[0], d.screened[0])


def test_input_screening_scores_a_stratified_seeded_sample(planted) -> None:
    d = PixelScreen()
    r = evaluate_defense(d, _sorted_inputs(planted), eval_limit=180)
    clean_labels = d.screened[0]
    assert len(d.screened) == 2, "the clean and the triggered images, each screened once (flags from the scores)"
    counts = torch.bincount(clean_labels.long(), minlength=10)
    assert counts[0] == 0 and counts[1:].tolist() == [20] * 9, "every non-target class, in proportion"
    assert r.metrics["test_images"] == 180
    again = PixelScreen()
    evaluate_defense(again, _sorted_inputs(planted), eval_limit=180)
    assert torch.equal(again.screened[0], clean_labels), "seeded"
    other = PixelScreen()
    evaluate_defense(other, _sorted_inputs(planted, seed=1), eval_limit=180)
    assert torch.bincount(other.screened[0].long(), minlength=10).tolist() == counts.tolist()
    assert r.metrics["auroc"] == 1.0 and r.metrics["tpr"] == 1.0 and r.metrics["tpr_at_5_fpr"] == 1.0
    assert r.cell["text"] == "AUROC 1.000 (TPR 1.00 / FPR 0.00 (target 0.01) at its threshold; TPR 1.00 at 5 % FPR)"


def test_unset_seeds_derive_from_the_run_seed_and_set_ones_are_kept(planted) -> None:
    inputs = dataclasses.replace(planted.inputs(), seed=5)
    cheap = {"n_clean": 32, "epochs": 1}
    derived, kept = run_defenses(
        [
            DefenseSpec(name="fine_tuning", params=cheap),
            DefenseSpec(name="fine_tuning", label="fine_tuning_seed7", params={**cheap, "seed": 7}),
        ],
        inputs,
    )
    assert derived.params["seed"] == derived_seed(5, "defense:fine_tuning")
    assert kept.params["seed"] == 7
    assert build_defense("strip").rng_seed() == derived_seed(0, "defense:strip"), "used alone: run seed 0"


def test_dataset_screening_reports_its_operating_points(planted) -> None:
    r = evaluate_defense(build_defense("spectral_signature"), planted.inputs())
    m = r.metrics
    assert {"auroc", "tpr", "fpr", "tpr_at_5_fpr"} <= set(m)
    assert (
        r.cell["text"]
        == f"AUROC {m['auroc']:.3f} (TPR {m['tpr']:.2f} / FPR {m['fpr']:.2f} at its threshold; TPR {m['tpr_at_5_fpr']:.2f} at 5 % FPR)"
        f"; class 0 {100 * m['target_share']:.0f} % poisoned"
    )
    share = len(planted.indices) / int((planted.train.labels == 0).sum())
    assert m["poisoned_share"] == {"0": round(share, 4)} and m["target_share"] == round(share, 4)


def test_a_labelled_variant_is_reported_under_its_label_beside_the_default(planted) -> None:
    specs = [
        DefenseSpec(name="spectral_signature"),
        DefenseSpec(name="spectral_signature", label="spectral_signature_k5", params={"components": 5}),
    ]
    default, variant = run_defenses(specs, planted.inputs())
    assert (default.name, variant.name) == ("spectral_signature", "spectral_signature_k5")
    assert variant.params["components"] == 5 and variant.to_json()["defense"] == "spectral_signature"
    assert "defense" not in default.to_json()
    with pytest.raises(ConfigError, match=r"^two defences are reported as 'spectral_signature'; give one a label of its own"):
        run_defenses(
            [DefenseSpec(name="spectral_signature"), DefenseSpec(name="spectral_signature", params={"components": 5})], planted.inputs()
        )


def test_a_labelled_reports_figures_carry_its_label() -> None:
    def draw(path: Path) -> None:
        path.write_text("x")

    r = DefenseReport("neural_cleanse", "model", {}, 0.0, 0, {}, {}, {"neural_cleanse_trigger.png": draw, "audit.png": draw})
    assert sorted(labelled(r, "nc_long").figures) == ["nc_long_audit.png", "nc_long_trigger.png"]
    assert labelled(r, "neural_cleanse") is r


def test_a_mitigations_facts_join_its_metrics_and_cell(planted) -> None:
    r = evaluate_defense(build_defense("fine_pruning", n_clean=64, epochs=1), planted.inputs())
    m = r.metrics
    assert {"layer", "channels", "pruned", "validation_accuracy_unpruned", "validation_accuracy_pruned"} <= set(m)
    assert r.cell["text"].endswith(f", 64 clean, pruned {m['pruned']}/{m['channels']} channels of {m['layer']}")
    plain = evaluate_defense(build_defense("fine_tuning", n_clean=64, epochs=1), planted.inputs())
    assert plain.cell["text"].endswith(", 64 clean") and "summary" not in plain.metrics


def test_defender_clean_set_is_the_unpoisoned_images_in_a_derived_order(planted) -> None:
    clean = defender_clean_set(planted.train, planted.indices, 0)
    assert len(clean) == len(planted.train) - len(planted.indices)
    keep = torch.ones(len(planted.train), dtype=torch.bool)
    keep[planted.indices] = False
    idx = torch.nonzero(keep).flatten()
    order = torch.randperm(len(idx), generator=derived_generator(0, "defender"))
    assert torch.equal(clean.images, planted.train.images[idx[order]])
    assert not torch.equal(defender_clean_set(planted.train, planted.indices, 1).labels, clean.labels)


def test_model_inspection_needs_nothing_neural_cleanse_specific(planted, tmp_path) -> None:
    d = LastLabel()
    assert isinstance(d.fit(planted.model, planted.clean), ModelInspector)
    r = evaluate_defense(d, planted.inputs())
    assert r.metrics["flagged_labels"] == [9] and r.metrics["votes"] == list(range(10))
    assert r.metrics["clean_model"]["flagged_labels"] == [9]
    assert r.metrics["target_flagged"] is False and r.cell["text"].startswith("flags [9]; t=0")
    write_defenses(tmp_path, [r], "test")
    assert (tmp_path / "last_label.png").read_bytes() == b"png"


def test_update_audit_needs_the_model_before_the_update(planted) -> None:
    with pytest.raises(ConfigError, match="needs a run of the update setting") as err:
        evaluate_defense(build_defense("update_audit", **AUDIT), planted.inputs())
    assert "\n" not in str(err.value)


def test_update_audit_against_the_clean_update(planted, updates, tmp_path) -> None:
    inputs = planted.inputs(updates.poisoned_update, before_model=updates.before, clean_model=updates.clean_update)
    r = evaluate_defense(build_defense("update_audit", **AUDIT), inputs)
    m = r.metrics
    assert m["suspicious_labels"] == [0] and m["target_flagged"] and m["target_score"] > 0.3
    assert m["clean_model"]["suspicious_labels"] == [], "a clean update is no change"
    assert len(m["labels"]) == 10 and r.cell["value"] == m["target_score"]
    assert r.cell["text"].startswith("suspicious [0] (clean update: none); t=0")
    write_defenses(tmp_path, [r], "test")
    assert (tmp_path / "audit_trigger_0.png").stat().st_size > 0
    json.loads((tmp_path / "defenses.json").read_text())


def test_unknown_kind_is_a_one_line_error(planted) -> None:
    class Odd(LastLabel):
        kind: ClassVar[str] = "odd"

    with pytest.raises(ConfigError, match="kind 'odd', which no evaluator measures"):
        evaluate_defense(Odd(), planted.inputs())


def test_experiment_writes_defenses_and_matrix(run_dir) -> None:
    report = json.loads((run_dir / "defenses.json").read_text())
    assert [d["name"] for d in report["defenses"]] == ["spectral_signature", "neural_cleanse", "fine_tuning"]
    assert "training split minus the poisoned images" in report["clean_source"]
    environment = json.loads((run_dir / "environment.json").read_text())
    assert report["code"] == {k: environment[k] for k in ("perturbd", "git_commit", "code_digest")}, "the code that defended is recorded"
    assert report["defenses"][2]["clean_images_used"] == 50
    assert (run_dir / "neural_cleanse_trigger.png").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["defenses"]) == {"spectral_signature", "neural_cleanse", "fine_tuning"}
    md = (run_dir / "matrix.md").read_text()
    assert "spectral_signature" in md.splitlines()[0] and "patch 3px c=255" in md
    rows = list(csv.DictReader((run_dir / "matrix.csv").open()))
    assert len(rows) == 1 and float(rows[0]["spectral_signature"]) > 0.5 and "fine_tuning_accuracy_cost" in rows[0]


def test_matrix_over_several_runs(run_dir, tmp_path) -> None:
    md, csv_path = write_matrix(matrix_rows([run_dir, run_dir]), tmp_path)
    text = md.read_text()
    assert text.count("patch 3px c=255") == 3  # over seeds, then each run
    assert "AUROC " in text and "target flagged " in text and "ASR after " in text
    assert len(list(csv.DictReader(csv_path.open()))) == 2


def test_bad_defense_in_config_fails_before_any_work(tiny_run, tmp_path) -> None:
    cfg = load_config(overrides=[*tiny_run, "defenses=[{name: strip, params: {overlays: 0}}]"])
    with pytest.raises(ConfigError, match=r"strip.overlays must be in \[1, 1000\], got 0"):
        run(cfg, tmp_path)
    assert not run_dir_for(cfg, tmp_path).exists()


SOURCES = ["poison.sources=[1, 2]", "defenses=[{name: fine_tuning, params: {n_clean: 50, epochs: 1}}]"]


def test_defences_of_a_source_specific_run_report_its_asr(tiny_overrides, tmp_path) -> None:
    folder = run(load_config(overrides=[*tiny_overrides, *SOURCES]), tmp_path).run_dir
    asr = json.loads((folder / "metrics.json").read_text())["attack_success_rate"]
    report = json.loads((folder / "defenses.json").read_text())["defenses"][0]["metrics"]
    assert report["asr_before"] == asr, "the defence's 'before' is the run's ASR: over the source classes"
    assert report["sources"] == [1, 2] and {"non_source_asr_before", "non_source_asr_after"} <= set(report)
    inputs = load_inputs(folder)
    assert inputs.sources == (1, 2), "perturbd defend takes the sources from the run's config"
    again = evaluate_defense(build_defense("fine_tuning", n_clean=50, epochs=1), inputs)
    assert again.metrics["asr_before"] == asr
    bare = load_inputs(folder / "model.safetensors", data="mnist5k", trigger=folder / "trigger.safetensors", target=0, sources=[2, 1])
    assert bare.sources == (2, 1), "a bare model: the sources given (--source)"
    with pytest.raises(ConfigError, match=r"--source \[0\] has no class other than the target 0"):
        load_inputs(folder / "model.safetensors", data="mnist5k", target=0, sources=[0])
