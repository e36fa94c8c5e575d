"""RunMetrics: metrics.json round trip, optional parts, infinite PSNR, rows, unknown keys refused;
the metric table."""

from __future__ import annotations

import json
import math

import pytest
from conftest import hand_metrics as metrics
from pydantic import ValidationError

from perturbd.errors import DataError
from perturbd.runs.folder import RunDir
from perturbd.runs.results import METRICS, BeforeUpdate, RunMetrics, StoredMetrics, UpdateFacts, pct
from perturbd.runs.rundir import write_json

BEFORE = BeforeUpdate(clean_accuracy=0.99, attack_success_rate=0.05)
UPDATE = UpdateFacts(batch_size=100, batch="fresh", initial_train_size=4000, epochs=1, lr=0.01,
                     pre_update_model="trained here", checkpoint_sha256=None)  # fmt: skip


@pytest.mark.parametrize("parts", [{}, {"before_update": BEFORE, "update": UPDATE, "setting": "update"},
                                   {"defenses": {"strip": {"auc": 0.93, "text": "AUC 0.93"}}}],
                         ids=["plain", "update", "defenses"])  # fmt: skip
def test_round_trip_through_metrics_json(tmp_path, parts) -> None:
    m = metrics(**parts)
    write_json(tmp_path / "metrics.json", m.to_json())
    back = RunDir(tmp_path).metrics()
    assert back == m and back.to_json() == m.to_json()
    assert json.loads((tmp_path / "metrics.json").read_text()) == m.to_json()


def test_optional_parts_are_absent_when_none() -> None:
    plain = metrics().to_json()
    assert not {"before_update", "update", "defenses"} & set(plain)
    assert plain["trigger"] == {"kind": "grid", "linf": 24.0, "l2": 336.0} and plain["seed"] == 1
    full = metrics(before_update=BEFORE, update=UPDATE, defenses={"strip": {"auc": 0.9}}).to_json()
    assert full["before_update"] == {"clean_accuracy": 0.99, "attack_success_rate": 0.05}
    assert full["update"]["checkpoint_sha256"] is None  # a None inside a part is kept
    assert full["defenses"] == {"strip": {"auc": 0.9}}


def test_an_infinite_psnr_survives_to_json_and_read(tmp_path) -> None:
    # an image the trigger leaves unchanged has an infinite PSNR; it must not be lost or turned into null
    stealth = metrics().stealth.model_copy(update={"psnr_mean": math.inf, "psnr_min": math.inf})
    m = metrics(stealth=stealth)
    assert m.to_json()["stealth"]["psnr_min"] == math.inf
    write_json(tmp_path / "metrics.json", m.to_json())
    assert RunDir(tmp_path).metrics().stealth.psnr_mean == math.inf
    assert ("PSNR mean / worst", "inf / inf dB") in m.rows()


def test_rows_have_the_before_update_row_only_for_update_runs() -> None:
    plain = dict(metrics().rows())
    assert not any(what.startswith("before update") for what in plain)
    assert plain["attack success rate"] == "97.00 %" and plain["accuracy loss"] == "+0.40 points"
    assert plain["injection rate"] == "10.00 % (100 of 1000 images)" and plain["setting / knowledge"] == "before_training / full"
    rows = metrics(setting="update", before_update=BEFORE, update=UPDATE).rows()
    assert rows[0] == ("before update: accuracy / ASR", "99.00 % / 5.00 %")
    assert len(rows) == len(plain) + 1


def test_rows_end_with_one_row_per_defense() -> None:
    rows = metrics(defenses={"strip": {"text": "flagged 12 %"}, "fine_pruning": {"auc": 0.5}}).rows()
    assert rows[-2:] == [("defense strip", "flagged 12 %"), ("defense fine_pruning", "")]


def test_extra_keys_are_rejected(tmp_path) -> None:
    data = metrics().to_json()
    with pytest.raises(ValidationError, match="bogus"):
        RunMetrics.model_validate({**data, "bogus": 1})
    with pytest.raises(ValidationError, match="psnr"):
        RunMetrics.model_validate({**data, "stealth": {**data["stealth"], "psnr": 30.0}})
    write_json(tmp_path / "metrics.json", {**data, "asr": 0.9})
    with pytest.raises(
        DataError, match=r"metrics.json is not a perturbd run's metrics \(asr: Extra inputs are not permitted\); .*--force"
    ) as err:
        RunDir(tmp_path).metrics()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [None, "{bad json"], ids=["missing", "corrupt"])
def test_unreadable_metrics_are_one_line_data_error(tmp_path, content) -> None:
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(DataError, match=r"^cannot read .*metrics\.json \(.*\); rerun the run with --force$") as err:
        RunDir(tmp_path).metrics()
    assert "\n" not in str(err.value)


def test_missing_keys_are_rejected_and_values_are_final() -> None:
    data = metrics().to_json()
    del data["clean_accuracy"]
    with pytest.raises(ValidationError, match="clean_accuracy"):
        RunMetrics.model_validate(data)
    with pytest.raises(ValidationError):
        metrics().seed = 2  # type: ignore[misc]


def test_pct() -> None:
    assert pct(0.12345) == "12.35 %" and pct(1) == "100.00 %"
    assert pct(None) == pct(math.nan) == pct(math.inf) == "–"


def test_the_metric_table_reads_every_metric_from_run_metrics() -> None:
    m = metrics()
    assert list(METRICS) == [
        "clean_accuracy", "accuracy_loss", "attack_success_rate", "clean_model_asr", "injection_rate",
        "poisoned_count", "trigger_linf", "trigger_l2", "psnr_mean", "ssim_mean",
    ], "the column order of aggregate.csv and runs.csv"  # fmt: skip
    values = {k: metric.value(m) for k, metric in METRICS.items()}
    assert values["psnr_mean"] == 31.2 and values["trigger_l2"] == 336.0 and values["poisoned_count"] == 100.0
    assert len({metric.label for metric in METRICS.values()}) == len(METRICS)
    assert METRICS["ssim_mean"].text(0.91) == "0.9100" and METRICS["attack_success_rate"].text(None) == "–"
    assert METRICS["accuracy_loss"].show(m) == "+0.40 points" == dict(m.rows())["accuracy loss"]


def test_the_tolerant_reader_keeps_what_another_version_wrote_and_says_what_is_wrong(tmp_path) -> None:
    data = metrics().to_json()
    write_json(tmp_path / "metrics.json", data)
    assert (
        RunDir(tmp_path).stored_metrics() == StoredMetrics(data) and StoredMetrics(data).value("psnr_mean") == data["stealth"]["psnr_mean"]
    )
    old = {k: v for k, v in data.items() if k != "clean_model_asr"} | {"a_key_from_another_version": 1}
    write_json(tmp_path / "metrics.json", old)
    stored = RunDir(tmp_path).stored_metrics()
    assert (
        stored.data == old
        and stored.value("clean_model_asr") is None
        and stored.value("attack_success_rate") == data["attack_success_rate"]
    )
    assert stored.problem is not None and "(clean_model_asr: Field required)" in stored.problem and "\n" not in stored.problem
    (tmp_path / "metrics.json").write_text("{bad json")
    broken = RunDir(tmp_path).stored_metrics()
    assert broken.data == {} and all(broken.value(m) is None for m in METRICS)
    assert broken.problem is not None and broken.problem.startswith("cannot read ")
