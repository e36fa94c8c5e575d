"""`perturbd defenses` and `perturbd trigger list`: every kind with one line saying what it is and
each parameter with its default and range, fast (no torch imported); the stored defence entries
(src/perturbd/cli/catalog.json) are the registry's, and stale ones are never shown (issue 40)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perturbd.cli import catalog
from perturbd.defenses import get_defense, list_defenses
from perturbd.trigger_params import KINDS

PROBE = """import sys
from perturbd.cli import main
sys.argv = ["perturbd", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    print("exit", stop.code, "torch" in sys.modules, file=sys.stderr)
"""


def _listed(*args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    return done.stdout, done.stderr


@pytest.mark.parametrize("args", [["defenses"], ["trigger", "list"]])
def test_listing_loads_no_torch(args: list[str]) -> None:
    out, err = _listed(*args)
    assert err.strip().splitlines()[-1] == "exit 0 False", err
    names = list_defenses() if args == ["defenses"] else KINDS.names()
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == names


def test_every_defence_parameter_is_listed_with_its_default_and_range(cli) -> None:
    code, out, _ = cli("defenses")
    assert code == 0
    lines, flat = out.splitlines(), " ".join(out.split())  # flat: the text as wrapped, joined again
    for name in list_defenses():
        cls = get_defense(name)
        head = next(line for line in lines if line.split()[0] == name)
        assert cls.kind in head.split() and len(head.split()) > 3, "a one-line description after the kind"
        for key, field in cls.Params.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = catalog.value_text(default)
            assert any(line.split()[0] == f"{name}.{key}={shown}" for line in lines), f"{name}.{key}"
            assert f"{name}.{key}={shown} " in flat and " ".join((field.description or "").split()) in flat
            assert catalog.field_range(field) in flat.split(f"{name}.{key}={shown} ")[1][:80]
    epochs = get_defense("neural_cleanse").Params.model_fields["epochs"]
    bounds = f"[{epochs.metadata[0].ge}, {epochs.metadata[1].le}]"
    assert f"neural_cleanse.epochs={epochs.default} int in {bounds}:" in flat
    assert all(len(line) <= 80 for line in lines), "wrapped to the console's width (80 when not a terminal)"


def test_every_trigger_kind_says_what_it_is(cli) -> None:
    code, out, _ = cli("trigger", "list")
    assert code == 0
    for name in KINDS.names():
        kind = KINDS.get(name)
        assert kind.about, f"trigger '{name}' has no one-line description"
        assert f"{name} " in out and kind.about in " ".join(out.split())
        for key in kind.params.model_fields:
            assert f"trigger.{key}=" in out
    assert "trigger.amplitude=10.0  float in (0, 255]:" in out


def test_a_filter_and_one_that_matches_nothing(cli) -> None:
    code, out, _ = cli("defenses", "fine_*")
    assert code == 0 and [line.split()[0] for line in out.splitlines() if not line.startswith(" ")] == list_defenses("fine_*")
    code, out, _ = cli("trigger", "list", "sig*")
    assert code == 0 and "grid" not in out and "sig_ramp" in out
    code, _, err = cli("defenses", "nothing*")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no defence matches 'nothing*'" in err


def test_the_stored_defences_are_the_registry_s() -> None:
    stored = catalog.stored_defense_entries()
    assert stored is not None, "src/perturbd/cli/catalog.json is stale: run `python tools/write_catalog.py`"
    assert stored == json.loads(json.dumps(catalog.live_defense_entries())), "run `python tools/write_catalog.py`"


def test_stale_or_missing_entries_are_read_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = json.loads(json.dumps(catalog.live_defense_entries()))
    stale = tmp_path / "catalog.json"
    stale.write_text(json.dumps({"sources": "0" * 64, "defenses": [{"name": "gone", "kind": "model", "about": "", "params": []}]}))
    monkeypatch.setattr(catalog, "CATALOG", stale)
    assert catalog.stored_defense_entries(stale) is None
    assert [e["name"] for e in catalog.defense_entries()] == [e["name"] for e in live]
    written = catalog.write_catalog(tmp_path / "fresh.json")
    assert catalog.stored_defense_entries(written) == live
    assert catalog.stored_defense_entries(tmp_path / "missing.json") is None
