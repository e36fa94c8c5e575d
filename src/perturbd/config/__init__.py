"""Typed experiment configuration: one pydantic model per YAML section.

The sections are in :mod:`.sections`, the trigger's in :mod:`.trigger`, files and dotted keys in
:mod:`.keys`; this module holds the whole config, its hash, and the one-line errors. Units are
stated in every field's description. Amplitudes and budgets are in pixel units of the 0–255
scale; rates are fractions in [0, 1]. Every key can be set from the CLI with
``--set section.key=value`` (the value is parsed as YAML)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from perturbd.config.keys import apply_overrides, dump_yaml, flat_keys, parse_assignment, read_yaml, set_dotted
from perturbd.config.sections import (
    AttackConfig,
    DataConfig,
    DefenseSpec,
    ModelConfig,
    PoisonConfig,
    Section,
    TrainConfig,
    repeated_report_name,
)
from perturbd.config.trigger import (
    LEGACY_TRIGGER_DEFAULTS,
    TriggerConfig,
    foreign_legacy_keys,
    legacy_trigger_section,
    legacy_value,
    section_fields,
)
from perturbd.errors import ConfigError
from perturbd.limits import SEED_LIMIT
from perturbd.registry import suggest

# bytes of a run name: its folder adds "-<hash8>", and file systems allow 255 bytes a name
NAME_MAX = 200


class ExperimentConfig(Section):
    name: str | None = Field(None, description="run name, one folder name (its folder is <name>-<hash8>); default: <data>-<trigger>")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="run seed, 0 ≤ seed < 2^63")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    trigger: TriggerConfig = TriggerConfig()
    poison: PoisonConfig = PoisonConfig()
    attack: AttackConfig = AttackConfig()
    train: TrainConfig = TrainConfig()
    defenses: list[DefenseSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str | None) -> str | None:
        """The run folder is ``<out>/<name>-<hash8>``: a name that holds a separator, starts with a
        dot or is too long for a file system would write it elsewhere or fail after the training."""
        if value is not None and (not value or value.startswith(".") or any(c in value for c in "/\\\0") or len(value.encode()) > NAME_MAX):
            raise ValueError(f"must be one folder name: no '/' or '\\', not starting with '.', at most {NAME_MAX} bytes")
        return value

    @field_validator("defenses", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("defenses")
    @classmethod
    def _one_report_name_each(cls, value: list[DefenseSpec]) -> list[DefenseSpec]:
        problem = repeated_report_name(value)
        if problem is not None:
            raise PydanticCustomError("one_line", "{message}", {"message": problem})
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
    if first["type"] in ("trigger_param", "one_line"):
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


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment config from an optional YAML file plus CLI overrides."""
    data = read_yaml(path) if path is not None else {}
    return validate(apply_overrides(data, overrides or []))


__all__ = [
    "LEGACY_TRIGGER_DEFAULTS",
    "NAME_MAX",
    "AttackConfig",
    "DataConfig",
    "DefenseSpec",
    "ExperimentConfig",
    "ModelConfig",
    "PoisonConfig",
    "Section",
    "TrainConfig",
    "TriggerConfig",
    "apply_overrides",
    "config_hash",
    "dump_yaml",
    "flat_keys",
    "foreign_legacy_keys",
    "legacy_trigger_section",
    "legacy_value",
    "load_config",
    "parse_assignment",
    "read_yaml",
    "repeated_report_name",
    "section_fields",
    "set_dotted",
    "validate",
]
