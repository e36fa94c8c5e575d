"""Typed experiment configuration: one pydantic model per YAML section.

Units are stated in every field's description. Amplitudes and budgets are in pixel units of the
0–255 scale; rates are fractions in [0, 1]. Every key can be set from the CLI with
``--set section.key=value`` (the value is parsed as YAML).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from perturbd.errors import ConfigError
from perturbd.knowledge import KNOWLEDGE, check_knowledge
from perturbd.registry import suggest
from perturbd.trigger_params import KINDS, StaticParams, TriggerParams, params_of


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    name: str = Field("mnist5k", description="data source: see `perturbd datasets`")
    root: Path = Field(Path("~/.cache/perturbd/data"), description="folder holding downloaded data")
    download: bool = Field(False, description="download torchvision data sets that are missing")
    train_limit: int | None = Field(None, ge=10, description="keep a seeded stratified subset of N training images")
    test_limit: int | None = Field(None, ge=10, description="keep a seeded stratified subset of N test images")


class ModelConfig(Section):
    name: str = Field(
        "auto",
        description="architecture: see `perturbd models`; auto picks by image shape; tv:<torchvision name>; torchscript:PATH (a torch.jit.save file); factory:package.module:function (your code: returns a fresh nn.Module)",
    )
    weights: Path | None = Field(
        None,
        description="state dict every model of this architecture starts from (pretrained or third-party): .safetensors, or .pt/.pth read with torch.load(weights_only=True)",
    )
    replace_head: bool = Field(
        False,
        description="when model.weights' final layer has another class count than the data, train a new one (transfer learning); false: an error",
    )
    features: str | None = Field(
        None, description="layer whose output, flattened, dataset screening reads (e.g. layer4); default: the final linear layer's input"
    )
    input_range: tuple[float, float] | None = Field(
        None, description="pixel range the network takes, e.g. [0, 1] or [0, 255]; default [0, 1]"
    )
    mean: list[float] | None = Field(
        None,
        min_length=1,
        description="subtracted per channel (one value or one per channel), in input_range units; default: none for torchscript:/factory: models and third-party weights, what a perturbd checkpoint records, else the architecture's own (0.5)",
    )
    std: list[float] | None = Field(
        None,
        min_length=1,
        description="divided by per channel, in input_range units; default as for mean (1, or 0.5); what is not stated keeps its default",
    )

    @field_validator("weights", "replace_head")
    @classmethod
    def _not_torchscript(cls, value: Any, info: ValidationInfo) -> Any:
        if value and str(info.data.get("name", "")).startswith("torchscript:"):
            raise ValueError(
                "a TorchScript model holds its own weights and layers; drop it, or use tv:NAME / factory:... with model.weights"
            )
        return value

    @field_validator("input_range")
    @classmethod
    def _increasing(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("must be [low, high] with low < high, e.g. [0, 255]")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("must be positive")
        return value


# The flat trigger section every config before per-kind Params held (one field per parameter of
# every kind) with its defaults: what an old config.yaml may carry beside its kind's own keys, and
# what :func:`legacy_trigger_section` fills in for the run hash.
LEGACY_TRIGGER_DEFAULTS: dict[str, Any] = {
    "amplitude": 10.0, "path": None, "size": 3, "method": "deepfool", "norm": "linf", "budget": 10.0, "overshoot": 0.02, "max_steps": 10,
    "passes": 5, "fooling_rate": 0.9, "samples": 1000, "lr": 2.0, "batch_size": 64, "alpha": 0.2, "sig_amplitude": 20.0, "frequency": 6.0,
    "grid_k": 4, "warp_strength": 0.5, "noise_ratio": 2.0,
}  # fmt: skip
_TRIGGER_OWN = ("kind", "psnr", "ssim")


class TriggerConfig(Section):
    """``trigger: {kind, psnr | ssim, <the kind's own parameters>}``.

    The kind's parameters (see ``perturbd trigger list``) are validated against the registered
    kind's ``Params`` (:mod:`perturbd.trigger_params`) and held in :attr:`params`; they read as
    attributes too (``cfg.trigger.budget``). A key of the old flat section (one field for every
    kind) that the kind does not take is accepted at its old default value and dropped, so every
    config written before still reads; at another value it is a one-line error."""

    kind: str = Field("grid", description="trigger kind: see `perturbd trigger list`")
    psnr: float | None = Field(
        None,
        gt=0,
        le=100,
        description="equal visibility: the strength (strength_key) searched so that the poisoned adversary's images have this mean PSNR (dB); in adversary.json",
    )
    ssim: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="equal visibility as psnr, by the mean SSIM of the poisoned images instead (a fraction; not with psnr)",
    )
    params: SerializeAsAny[TriggerParams] = Field(default_factory=StaticParams, description="the kind's own parameters")

    @model_validator(mode="before")
    @classmethod
    def _kind_params(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "params" in data:
            return data
        kind = data.get("kind", "grid")
        if not isinstance(kind, str):
            return data  # the str field reports it
        try:
            model = params_of(kind)
        except ConfigError as err:
            raise _trigger_error(str(err)) from None
        own = {k: v for k, v in data.items() if k in model.model_fields}
        for key, value in data.items():
            if key not in model.model_fields and key not in _TRIGGER_OWN:
                _foreign(kind, model, key, value)
        try:
            params = model.model_validate(own)
        except ValidationError as err:
            raise ValidationError.from_exception_data(
                "TriggerConfig",
                [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx", {})) for e in err.errors()],
            ) from None
        return {k: v for k, v in data.items() if k in _TRIGGER_OWN} | {"params": params}

    @model_validator(mode="after")
    def _one_visibility(self) -> TriggerConfig:
        if not isinstance(self.params, params_of(self.kind)):
            raise ValueError(
                f"trigger.params must be {params_of(self.kind).__name__} for kind '{self.kind}', got {type(self.params).__name__}"
            )
        if self.psnr is not None and self.ssim is not None:
            raise ValueError(f"trigger.psnr ({self.psnr:g}) and trigger.ssim ({self.ssim:g}) both set the strength; keep one")
        return self

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        return {"kind": out["kind"], **out["params"], "psnr": out["psnr"], "ssim": out["ssim"]}

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in type(self.params).model_fields:
            return getattr(self.params, name)
        return super().__getattr__(name)  # type: ignore[misc]

    @property
    def family(self) -> str:
        """The kind of trigger, without its size: ``grid``, ``adaptive deepfool linf``, ``wanet``."""
        return self.params.family(self.kind)

    @property
    def label(self) -> str:
        """The one display label of this trigger: ``grid c=10``, ``patch 3px c=255``,
        ``image mask.png``, ``adaptive deepfool linf ξ=10``, ``blended α=0.2``, ``sig Δ=20 f=6``,
        ``wanet k=4 s=0.5`` (the kind's ``Params.label``), ``grid at PSNR 34.5 dB``."""
        if self.psnr is not None:
            return f"{self.family} at PSNR {self.psnr:g} dB"
        if self.ssim is not None:
            return f"{self.family} at SSIM {self.ssim:g}"
        return self.params.label(self.kind)

    @property
    def strength_key(self) -> str:
        """The field that sets how strong the trigger is (the kind's ``Params.strength_key``):
        ``budget`` for adaptive masks, ``alpha`` (blended), ``sig_amplitude`` (sig),
        ``warp_strength`` (wanet), else ``amplitude``."""
        return self.params.strength_key

    @property
    def strength(self) -> float:
        """The size the label names: the field :attr:`strength_key` names (the PSNR or SSIM asked
        for, when the strength is set by ``psnr`` or ``ssim``)."""
        goal = self.psnr if self.psnr is not None else self.ssim
        return goal if goal is not None else self.params.strength

    def at_strength(self, value: float) -> TriggerConfig:
        """This trigger with its strength field set to ``value`` and no ``psnr`` / ``ssim`` goal."""
        return self.model_copy(update={self.strength_key: value, "psnr": None, "ssim": None})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> TriggerConfig:
        """A copy with ``update`` applied (unvalidated, as pydantic's): ``kind``, ``psnr``, ``ssim``
        or ``params`` themselves, or parameters of this kind (``{"budget": 4}``)."""
        update = dict(update or {})
        own = {k: v for k, v in update.items() if k in type(self).model_fields}
        mine = {k: v for k, v in update.items() if k not in own}
        for key in mine:
            if key not in type(self.params).model_fields:
                raise ConfigError(
                    f"trigger.{key} is not a parameter of '{self.kind}' (its parameters: {', '.join(type(self.params).model_fields)})"
                )
        if mine:
            own["params"] = own.get("params", self.params).model_copy(update=mine)
        return super().model_copy(update=own, deep=deep)


def _foreign(kind: str, model: type[TriggerParams], key: str, value: Any) -> None:
    """Accept a key of the old flat section at its old default (it is then dropped); else a
    one-line error saying what to write instead."""
    valid = ", ".join(model.model_fields) or "none"
    if key in LEGACY_TRIGGER_DEFAULTS:
        default = LEGACY_TRIGGER_DEFAULTS[key]
        if value == default or (
            default is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == default
        ):
            return
        takers = [k for k in KINDS if key in params_of(k).model_fields]
        raise _trigger_error(
            f"trigger.{key}={value!r} is not a parameter of '{kind}' (its parameters: {valid}); drop it, or set trigger.kind to a kind that takes it ({', '.join(takers)})"
        )
    raise _trigger_error(
        f"trigger.{key} is not a parameter of '{kind}' (its parameters: {valid}){suggest(key, [*model.model_fields, *_TRIGGER_OWN])}"
    )


def _trigger_error(message: str) -> PydanticCustomError:
    """An error of the trigger section that :func:`validate` reports as its own one line."""
    return PydanticCustomError("trigger_param", "{message}", {"message": message})


def section_fields(model: type[BaseModel]) -> dict[str, Any]:
    """The keys a user may write in the section ``model`` (name → pydantic field): its fields;
    for :class:`TriggerConfig`, ``kind``, ``psnr``, ``ssim`` and every registered kind's parameters."""
    if model is not TriggerConfig:
        return dict(model.model_fields)
    out = {k: v for k, v in model.model_fields.items() if k != "params"}
    for kind in KINDS:
        out = {**params_of(kind).model_fields, **out}
    return out


def legacy_trigger_section(trigger: TriggerConfig) -> dict[str, Any]:
    """The trigger section in the flat form of every config before per-kind Params: the old
    defaults of every kind's parameters, overwritten by this kind's own.

    Why: :meth:`ExperimentConfig.hash` names run folders, keys the clean-twin cache and lets a
    sweep resume; hashing this form keeps the hash of an unchanged experiment what it was."""
    return {**LEGACY_TRIGGER_DEFAULTS, **trigger.model_dump(mode="json")}


class PoisonConfig(Section):
    rate: float = Field(0.05, gt=0, le=1, description="injection rate: poisoned / samples of the set")
    target: int = Field(0, ge=0, description="target label t")
    sources: Literal["all"] | list[int] = Field("all", description="classes whose images may be poisoned")
    quantize: bool = Field(True, description="round poisoned images to uint8, as an image file would")
    mode: Literal["dirty", "clean_label"] = Field(
        "dirty",
        description="dirty: relabel poisoned images of other classes to the target; clean_label: poison target-class images only, labels kept",
    )


class AttackConfig(Section):
    setting: Literal["before_training", "update"] = Field("before_training", description="the paper's two settings")
    knowledge: str = Field(
        "full", description="what the adversary knows: " + "; ".join(f"{name} ({k.description})" for name, k in KNOWLEDGE.items())
    )
    surrogate: str = Field("auto", description="surrogate architecture for knowledge data/none")
    surrogate_steps: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="optimiser steps at least, for the models the adversary trains itself (knowledge data/model/none)",
    )
    aux_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training set held out as the adversary's auxiliary data")
    same_victim: bool = Field(
        True,
        description="hold the auxiliary data out of the victim's training under every knowledge level (and for static masks): the victim is the same model whatever the adversary knows; false: only when the adversary does not know the data",
    )
    holdout_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="share of the adversary's own data kept out of its training and mask computation, to measure its accuracy and the mask's held-out fooling rate",
    )
    update_size: int = Field(6000, ge=10, description="update setting: images in the update batch")
    update_epochs: int = Field(2, ge=1, description="update setting: fine-tuning epochs")
    update_lr: float = Field(0.01, gt=0, description="update setting: fine-tuning learning rate")
    checkpoint: Path | None = Field(None, description="update setting: clean model to start from (.safetensors, or a .pt/.pth state dict)")

    @field_validator("knowledge")
    @classmethod
    def _known_level(cls, value: str) -> str:
        return check_knowledge(value)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant", "linear"] = Field("cosine", description="lr decay after warm-up; linear: to 0")
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of the optimiser steps over which lr rises linearly to train.lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing ε (0: none)")
    augment: Literal["auto", "none", "crop_flip", "crop"] = Field("auto", description="auto: crop+flip for colour, none for grey")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads, set by what runs the experiment (perturbd run, a sweep worker; from Python: perturbd.process.tune_process), never by fit; default: all cores",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the model for training (pays a one-off compile time)")
    deterministic: bool = Field(False, description="PyTorch's deterministic algorithms (GPU runs repeat exactly; slower)")


class DefenseSpec(Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(Section):
    name: str | None = Field(None, description="run name; default: <data>-<trigger>")
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    trigger: TriggerConfig = TriggerConfig()
    poison: PoisonConfig = PoisonConfig()
    attack: AttackConfig = AttackConfig()
    train: TrainConfig = TrainConfig()
    defenses: list[DefenseSpec] = Field(default_factory=list)

    @field_validator("defenses", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def run_name(self) -> str:
        return self.name or f"{self.data.name.split(':')[0]}-{self.trigger.kind}"

    def hash(self) -> str:
        """First 8 hex digits of the SHA-256 of the canonical JSON of this config, its trigger
        section in the flat form of older versions (:func:`legacy_trigger_section`)."""
        return config_hash(self, {"trigger": legacy_trigger_section(self.trigger)})


def config_hash(cfg: BaseModel, replace: dict[str, Any] | None = None) -> str:
    """First 8 hex digits of the SHA-256 of the canonical JSON of ``cfg``, sections in ``replace``
    taken from there instead."""
    blob = json.dumps({**cfg.model_dump(mode="json"), **(replace or {})}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (the parent of an unknown key), for suggestions."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _one_line(err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or "config"
    if first["type"] == "trigger_param":
        return str(first["msg"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'{suggest(str(loc[-1]), _field_names(model, loc[:-1]))}"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"config '{where}': {first['msg']}, got {first.get('input')!r}{more}"


M = TypeVar("M", bound=BaseModel)


@overload
def validate(data: dict[str, Any]) -> ExperimentConfig: ...
@overload
def validate(data: dict[str, Any], model: type[M]) -> M: ...
def validate(data: dict[str, Any], model: type[BaseModel] = ExperimentConfig) -> BaseModel:
    """Build ``model`` from ``data``; a :class:`ConfigError` with one line on any mistake."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, model)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (safe loader: nothing is executed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{at}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of sections, got a {type(data).__name__}")
    return data


def parse_assignment(item: str, usage: str) -> tuple[str, Any]:
    """``key=value`` as ``(key, value)``, the value parsed as YAML (``""`` when empty, the text
    itself when it is not YAML); a one-line :class:`ConfigError` saying ``usage`` (e.g. ``--set
    takes section.key=value``) for anything else."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{usage}, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any, *, merge: bool = False) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, making missing sections; with
    ``merge`` a mapping value is merged into a mapping already there (so a sweep axis
    ``trigger: {kind: adaptive}`` keeps the other trigger keys), else it replaces it. A value in
    the way of a section is a one-line :class:`ConfigError`."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is a value ({child!r}), not a section")
        node = child
    old = node.get(parts[-1])
    node[parts[-1]] = {**old, **value} if merge and isinstance(old, dict) and isinstance(value, dict) else value


def flat_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: every leaf of nested mappings under its dotted key."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for item in overrides:
        set_dotted(out, *parse_assignment(item, "--set takes section.key=value"))
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment config from an optional YAML file plus CLI overrides."""
    data = read_yaml(path) if path is not None else {}
    return validate(apply_overrides(data, overrides or []))


def dump_yaml(cfg: BaseModel) -> str:
    text: str = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return text
