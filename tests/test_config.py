"""Config: defaults, overrides, one-line errors with suggestions, stable hashes."""

from __future__ import annotations

import pytest

from perturbd.cli.app import params_of
from perturbd.config import (
    ExperimentConfig,
    TriggerConfig,
    dump_yaml,
    flat_keys,
    load_config,
    parse_assignment,
    set_dotted,
    validate,
)
from perturbd.errors import ConfigError

BEFORE_RECIPE = ["train.epochs=10", "poison.rate=0.05"]  # the defaults before the default experiment's recipe changed


def test_defaults_match_the_design() -> None:
    cfg = load_config()
    assert cfg.data.name == "mnist5k" and cfg.model.name == "auto"
    assert cfg.trigger.kind == "grid" and cfg.trigger.amplitude == 10
    assert cfg.poison.rate == 0.1 and cfg.poison.target == 0 and cfg.poison.quantize
    assert cfg.train.epochs == 20, "the default experiment's recipe (README: chosen on seeds 10–14, scored on 0–4)"
    assert cfg.attack.setting == "before_training" and cfg.attack.knowledge == "full"


def test_a_defence_variant_carries_its_label_and_names_are_unique() -> None:
    cfg = load_config(
        overrides=["defenses=[spectral_signature, {name: spectral_signature, label: spectral_signature_k5, params: {components: 5}}]"]
    )
    assert [d.report_name for d in cfg.defenses] == ["spectral_signature", "spectral_signature_k5"]
    assert "label" not in cfg.defenses[0].model_dump(), "an unset label is not hashed: older configs keep their hash"
    with pytest.raises(
        ConfigError,
        match=r"^two defences are reported as 'spectral_signature'; give one a label of its own, "
        r"e.g. \{name: spectral_signature, label: spectral_signature_2, params: \{\.\.\.\}\}$",
    ):
        load_config(overrides=["defenses=[spectral_signature, {name: spectral_signature, params: {components: 5}}]"])
    with pytest.raises(ConfigError, match=r"^two defences are reported as 'strip'"):
        load_config(overrides=["defenses=[strip, {name: spectral_signature, label: strip}]"])
    with pytest.raises(ConfigError, match=r"^config 'defenses.0.label': String should match pattern"):
        load_config(overrides=["defenses=[{name: strip, label: ../x}]"])


def test_the_hash_of_a_config_with_defences_is_unchanged_by_labels() -> None:
    # as hashed before defence labels (7d9401d)
    overrides = [*BEFORE_RECIPE, "defenses=[strip, {name: spectral_signature, params: {components: 5}}]"]
    assert load_config(overrides=overrides).hash() == "e16161b2"


def test_overrides_parse_yaml_values(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("poison: {rate: 0.01}\ntrain: {epochs: 3}\n")
    cfg = load_config(path, ["poison.target=3", "poison.sources=[1, 2]", "trigger.kind=chessboard", "train.lr=1e-2"])
    assert cfg.poison.rate == 0.01 and cfg.poison.target == 3 and cfg.poison.sources == [1, 2]
    assert cfg.trigger.kind == "chessboard" and cfg.train.epochs == 3 and cfg.train.lr == 0.01


def test_defenses_accept_names_and_mappings() -> None:
    cfg = load_config(overrides=["defenses=[strip, {name: neural_cleanse, params: {epochs: 5}}]"])
    assert [d.name for d in cfg.defenses] == ["strip", "neural_cleanse"]
    assert cfg.defenses[1].params == {"epochs": 5}


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["poison.rat=0.1"], r"unknown config key 'poison.rat'; did you mean 'rate'\?"),
        (["trainn.epochs=1"], r"unknown config key 'trainn'; did you mean 'train'\?"),
        (["poison.rate=1.5"], r"config 'poison.rate': Input should be less than or equal to 1, got 1.5"),
        (["poison.rate=0"], r"poison.rate must be above 0 .*; to train a plain model .*: perturbd train FOLDER"),
        (["trigger.amplitude=-3"], r"config 'trigger.amplitude'"),
        (["trigger.amplitude=1000"], r"config 'trigger.amplitude'"),
        (["train.epochs=many"], r"config 'train.epochs'"),
        (["attack.knowledge=some"], r"config 'attack.knowledge'"),
        (["poison.rate"], r"--set takes section.key=value"),
        (["seed.x=1"], r"config 'seed': Input should be a valid integer"),
        (["trigger.kind=blended", "trigger.alpha=1.2"], r"config 'trigger.alpha': Input should be less than 1, got 1.2"),
        (["trigger.kind=blended", "trigger.alpha=0"], r"config 'trigger.alpha'"),
        (["trigger.psnr=34.5", "trigger.ssim=0.98"], r"trigger.psnr \(34.5\) and trigger.ssim \(0.98\) both set the strength; keep one"),
        (["trigger.ssim=1.5"], r"config 'trigger.ssim'"),
        (["poison.mode=clean"], r"config 'poison.mode'"),
        (["trigger.kind=wanet", "trigger.grid_k=1"], r"config 'trigger.grid_k'"),
        (["trigger.budgt=4"], r"trigger.budgt is not a parameter of 'grid' \(its parameters: amplitude\); choose one of"),
        (
            ["trigger.kind=adaptive", "trigger.budgt=4"],
            r"trigger.budgt is not a parameter of 'adaptive' \(its parameters: method, .*\); did you mean 'budget'\?",
        ),
        (
            ["trigger.budget=4"],
            r"trigger.budget=4 is not a parameter of 'grid' \(its parameters: amplitude\); "
            r"drop it, or set trigger.kind to a kind that takes it \(adaptive, lf, narcissus\)",
        ),
        (["trigger.kind=gird"], r"unknown trigger 'gird'; did you mean 'grid'\?"),
    ],
)
def test_bad_values_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(overrides=overrides)
    assert "\n" not in str(err.value)


def test_yaml_must_be_a_mapping(tmp_path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("data: {name: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_loader_executes_nothing(tmp_path) -> None:
    (tmp_path / "evil.yaml").write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")


def test_hash_is_stable_and_sensitive() -> None:
    a = ExperimentConfig()
    assert a.hash() == ExperimentConfig().hash() and len(a.hash()) == 8
    assert a.hash() != load_config(overrides=["seed=1"]).hash()


@pytest.mark.parametrize(
    "sets,key,label",
    [
        ({"kind": "grid"}, "amplitude", "grid c=10"),
        ({"kind": "patch", "amplitude": 255}, "amplitude", "patch 3px c=255"),
        ({"kind": "adaptive"}, "budget", "adaptive deepfool linf ξ=10"),
        ({"kind": "blended"}, "alpha", "blended α=0.2"),
        ({"kind": "sig"}, "sig_amplitude", "sig Δ=20 f=6"),
        ({"kind": "wanet"}, "warp_strength", "wanet k=4 s=0.5"),
        ({"kind": "wanet", "ssim": 0.99}, "warp_strength", "wanet at SSIM 0.99"),
        ({"kind": "sig", "psnr": 38.9}, "sig_amplitude", "sig at PSNR 38.9 dB"),
    ],
)
def test_every_kind_has_a_strength_and_a_label(sets: dict, key: str, label: str) -> None:
    cfg = TriggerConfig(**sets)
    assert cfg.strength_key == key and cfg.label == label
    assert cfg.strength == (sets.get("psnr") or sets.get("ssim") or getattr(cfg, key))


def test_set_dotted_creates_sections_and_merges_a_mapping_only_when_asked() -> None:
    data = {"trigger": {"kind": "grid", "amplitude": 6}, "train": 3}
    set_dotted(data, "poison.rate", 0.1)
    set_dotted(data, "trigger", {"kind": "adaptive", "budget": 10}, merge=True)  # linked sweep keys: other trigger keys stay
    set_dotted(data, "trigger.amplitude", 12)
    assert data == {"trigger": {"kind": "adaptive", "amplitude": 12, "budget": 10}, "train": 3, "poison": {"rate": 0.1}}
    set_dotted(data, "trigger", {"kind": "sig"})  # an override replaces the section
    set_dotted(data, "poison", 5)  # a plain value replaces the section
    assert data["trigger"] == {"kind": "sig"} and data["poison"] == 5
    with pytest.raises(ConfigError, match=r"^train.lr: 'train' is a value \(3\), not a section$"):
        set_dotted(data, "train.lr", 0.05)


def test_flat_keys() -> None:
    assert flat_keys({"trigger": {"kind": "grid", "opts": {"a": 1}}, "seed": 0}) == {"trigger.kind": "grid", "trigger.opts.a": 1, "seed": 0}
    assert flat_keys({}) == {}


def test_key_value_pairs_are_parsed_once_for_set_and_param() -> None:
    assert parse_assignment(" poison.rate =0.1", "--set takes section.key=value") == ("poison.rate", 0.1)
    assert parse_assignment("a=", "x") == ("a", "") and parse_assignment("a=[1, 2", "x") == ("a", "[1, 2"), "not YAML: the text itself"
    assert params_of(["k=3", "mode=fast", "k=4"]) == {"k": 4, "mode": "fast"}
    with pytest.raises(ConfigError, match=r"^--param takes key=value, got '=3'$"):
        params_of(["=3"])


# Hashes of these configs as written before per-kind trigger Params (the flat 22-field section):
# run folder names, the clean-twin cache and sweep resumption depend on them. They were written
# when the default recipe was 10 epochs at 5 % (BEFORE_RECIPE, which these experiments set).
HASHES_BEFORE_PARAMS = [
    ([], "e4ada130"),
    (["trigger.kind=adaptive", "trigger.budget=24", "trigger.samples=100"], "535deb3e"),
    (["trigger.kind=wanet", "trigger.grid_k=3", "trigger.psnr=30"], "d37559b2"),
    (["trigger.kind=blended", "trigger.path=key.png", "trigger.alpha=0.3"], "a8911add"),
    (["trigger.kind=sig", "trigger.frequency=3"], "32f4fb8e"),
    (["trigger.kind=patch", "trigger.amplitude=255", "trigger.size=4"], "dab23cb6"),
    (["trigger.kind=chessboard", "trigger.amplitude=16", "attack.setting=update"], "673161f4"),
    (["trigger.kind=sig_ramp", "trigger.sig_amplitude=30", "trigger.ssim=0.98"], "0756e312"),
]


@pytest.mark.parametrize("overrides,digest", HASHES_BEFORE_PARAMS)
def test_the_hash_of_an_unchanged_experiment_is_unchanged(overrides: list[str], digest: str) -> None:
    assert load_config(overrides=[*BEFORE_RECIPE, *overrides]).hash() == digest


# a trigger section as the code before per-kind Params wrote it to every run's config.yaml
FLAT = """trigger:
  kind: adaptive
  amplitude: 10.0
  path: null
  size: 3
  method: deepfool
  norm: l2
  budget: 24.0
  overshoot: 0.02
  max_steps: 10
  passes: 5
  fooling_rate: 0.9
  samples: 1000
  lr: 2.0
  batch_size: 64
  alpha: 0.2
  sig_amplitude: 20.0
  frequency: 6.0
  grid_k: 4
  warp_strength: 0.5
  noise_ratio: 2.0
  psnr: null
  ssim: null
"""


def test_a_flat_config_of_older_versions_reads_and_keeps_its_hash(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(FLAT)
    old = load_config(tmp_path / "config.yaml")
    assert old.trigger.params.budget == old.trigger.budget == 24 and old.trigger.norm == "l2"
    assert old.trigger.model_dump(mode="json") == {
        **old.trigger.params.model_dump(mode="json"),
        "kind": "adaptive",
        "psnr": None,
        "ssim": None,
    }
    assert "amplitude" not in dump_yaml(old)  # written back in the kind's own form
    short = load_config(overrides=["trigger.kind=adaptive", "trigger.norm=l2", "trigger.budget=24"])
    assert old == short and old.hash() == short.hash()
    (tmp_path / "again.yaml").write_text(dump_yaml(old))
    assert load_config(tmp_path / "again.yaml") == old
    (tmp_path / "bad.yaml").write_text(FLAT.replace("amplitude: 10.0", "amplitude: 6"))
    with pytest.raises(
        ConfigError,
        match=r"^trigger.amplitude=6 is not a parameter of 'adaptive' .*"
        r"drop it, or set trigger.kind to a kind that takes it \(chessboard, grid, ",
    ):
        load_config(tmp_path / "bad.yaml")


def test_a_trigger_copy_updates_the_kinds_parameters() -> None:
    cfg = TriggerConfig(kind="adaptive", psnr=30)
    small = cfg.model_copy(update={"samples": 32, "passes": 1})
    assert (small.params.samples, small.passes, small.psnr) == (32, 1, 30) and cfg.samples == 1000
    assert small.at_strength(4).label == "adaptive deepfool linf ξ=4"
    with pytest.raises(ConfigError, match=r"trigger.amplitude is not a parameter of 'adaptive'"):
        cfg.model_copy(update={"amplitude": 3})


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "a\\b", ".hidden", "", "x" * 201])
def test_a_run_name_is_one_folder_name(name: str) -> None:
    """Nothing is written outside --out: the run folder is <out>/<name>-<hash8>."""
    with pytest.raises(ConfigError, match=r"^config 'name': .*must be one folder name"):
        load_config(overrides=[f"name={name!r}"] if name else ["name=''"])


def test_a_plain_run_name_is_kept() -> None:
    assert load_config(overrides=["name=grid c=10 (seed 0)"]).run_name == "grid c=10 (seed 0)"


def test_a_trigger_copy_to_another_kind_rebuilds_its_parameters() -> None:
    adaptive = TriggerConfig().model_copy(update={"kind": "adaptive"})
    assert type(adaptive.params).__name__ == "AdaptiveParams" and adaptive.budget == 10
    assert adaptive.label == "adaptive deepfool linf ξ=10" and adaptive == TriggerConfig(kind="adaptive")
    image = TriggerConfig(kind="patch", amplitude=4, size=5).model_copy(update={"kind": "image", "path": "m.png"})
    assert (image.amplitude, str(image.path)) == (4, "m.png")  # the parameter both kinds take is carried over
    ring = TriggerConfig(amplitude=7).model_copy(update={"kind": "ring"})  # the same Params: kept
    assert (ring.kind, ring.amplitude) == ("ring", 7)
    for update, message in [
        ({"kind": "adaptive", "amplitude": 3}, r"^trigger.amplitude is not a parameter of 'adaptive' \(its parameters: method, "),
        ({"kind": "adaptive", "budget": -1}, r"^config 'trigger.budget': Input should be greater than 0, got -1$"),
        ({"kind": "nope"}, r"^unknown trigger 'nope'"),
        ({"kind": "wanet", "params": TriggerConfig().params}, r"^trigger.params must be WanetParams for kind 'wanet', got StaticParams$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TriggerConfig().model_copy(update=update)


def test_trigger_params_beside_kind_or_under_params() -> None:
    nested = load_config(overrides=["trigger.kind=grid", "trigger.params={amplitude: 3}"])
    assert nested == load_config(overrides=["trigger.amplitude=3"])
    for value, message in [
        ("{amplitude: 3}", r"^trigger.amplitude is given both beside kind and in trigger.params; keep one$"),
        ("3", r"^trigger.params must be a mapping of the kind's parameters, got 3; or write them beside kind$"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=["trigger.amplitude=4", f"trigger.params={value}"])
    with pytest.raises(ConfigError, match=r"^trigger.amplitud is not a parameter of 'grid' .*did you mean 'amplitude'\?$"):
        load_config(overrides=["trigger.params={amplitud: 3}"])


@pytest.mark.parametrize("key,value,ok", [("budget", "10", True), ("samples", "1000", True), ("samples", 1000.0, True),
                                          ("budget", "3", False), ("budget", "x", False), ("norm", "l2", False)])  # fmt: skip
def test_an_old_flat_key_at_its_default_is_read_as_its_field_reads_it(key: str, value: object, ok: bool) -> None:
    section = {"kind": "grid", key: value}
    if ok:
        assert validate(section, TriggerConfig) == TriggerConfig()
    else:
        with pytest.raises(ConfigError, match=rf"^trigger.{key}={value!r} is not a parameter of 'grid'"):
            validate(section, TriggerConfig)
