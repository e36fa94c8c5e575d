"""The trigger section: ``{kind, psnr | ssim, <the kind's own parameters>}``, validated against the
registered kind's ``Params`` (:mod:`perturbd.trigger_params`), and the flat section of older
versions (read, and hashed, as before)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from perturbd.config.sections import Section
from perturbd.errors import ConfigError
from perturbd.registry import suggest
from perturbd.trigger_params import KINDS, StaticParams, TriggerParams, params_of

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
        description="equal visibility: the strength (strength_key) searched so that the poisoned adversary's images "
        "have this mean PSNR (dB); in adversary.json",
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
        if not isinstance(data, dict) or isinstance(data.get("params"), TriggerParams):
            return data
        if "params" in data:
            data = _beside_kind(data)
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
        or ``params`` themselves, or parameters of the (new) kind (``{"budget": 4}``).

        A new ``kind`` without ``params`` rebuilds them for that kind, validated: the parameters
        both kinds take are carried over, those in ``update`` set, the others at their defaults.
        Any mismatch (a parameter the kind does not take, ``params`` of another kind) is a
        one-line :class:`ConfigError`."""
        update = dict(update or {})
        own = {k: v for k, v in update.items() if k in type(self).model_fields}
        mine = {k: v for k, v in update.items() if k not in own}
        kind = own.get("kind", self.kind)
        if not isinstance(kind, str):
            raise ConfigError(f"trigger.kind must be a kind's name, got {kind!r}")
        model = params_of(kind)
        for key in mine:
            if key not in model.model_fields:
                raise ConfigError(
                    f"trigger.{key} is not a parameter of '{kind}' (its parameters: {', '.join(model.model_fields) or 'none'})"
                )
        if "params" in own and type(own["params"]) is not model:
            raise ConfigError(f"trigger.params must be {model.__name__} for kind '{kind}', got {type(own['params']).__name__}")
        if "params" not in own and type(self.params) is not model:
            shared = {k: getattr(self.params, k) for k in model.model_fields if k in type(self.params).model_fields}
            try:
                own["params"] = model.model_validate({**shared, **mine})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigError(f"config 'trigger.{where}': {first['msg']}, got {first.get('input')!r}") from None
        elif mine:
            own["params"] = own.get("params", self.params).model_copy(update=mine)
        return super().model_copy(update=own, deep=deep)


def _beside_kind(data: dict[str, Any]) -> dict[str, Any]:
    """``{kind, params: {...}}`` (the JSON schema's shape) as the flat section: the parameters
    beside ``kind``; a one-line error if ``params`` is not a mapping or repeats a key."""
    params = data["params"]
    if not isinstance(params, Mapping):
        raise _trigger_error(f"trigger.params must be a mapping of the kind's parameters, got {params!r}; or write them beside kind")
    twice = sorted(str(k) for k in params if k in data)
    if twice:
        raise _trigger_error(f"trigger.{twice[0]} is given both beside kind and in trigger.params; keep one")
    return {**{k: v for k, v in data.items() if k != "params"}, **params}


def legacy_value(key: str, value: Any) -> Any:
    """``value`` of the old flat key ``key`` as the field of a kind that takes it reads it
    (``budget: "10"`` is 10.0, as the old flat field coerced it; JSON-like); a
    :class:`ValidationError` if that field refuses it."""
    for kind in KINDS:
        field = params_of(kind).model_fields.get(key)
        if field is not None and field.annotation is not None:
            adapter: TypeAdapter[Any] = TypeAdapter(field.annotation)
            return adapter.dump_python(adapter.validate_python(value), mode="json")
    return value


def _at_default(key: str, value: Any) -> bool:
    """Whether ``value`` of the old flat key ``key`` is its old default, read as its field reads it."""
    try:
        return bool(value == LEGACY_TRIGGER_DEFAULTS[key] or legacy_value(key, value) == LEGACY_TRIGGER_DEFAULTS[key])
    except ValidationError:
        return False


def foreign_legacy_keys(section: Mapping[str, Any]) -> list[str]:
    """The keys of the old flat section in the trigger section ``section`` that its kind does not
    take (what an older version wrote for every kind); ``[]`` for an unknown kind."""
    kind = section.get("kind", "grid")
    if not isinstance(kind, str) or kind not in KINDS:
        return []
    fields = params_of(kind).model_fields
    return [str(k) for k in section if k in LEGACY_TRIGGER_DEFAULTS and k not in fields]


def _foreign(kind: str, model: type[TriggerParams], key: str, value: Any) -> None:
    """Accept a key of the old flat section at its old default (it is then dropped); else a
    one-line error saying what to write instead."""
    valid = ", ".join(model.model_fields) or "none"
    if key in LEGACY_TRIGGER_DEFAULTS:
        if _at_default(key, value):
            return
        takers = [k for k in KINDS if key in params_of(k).model_fields]
        raise _trigger_error(
            f"trigger.{key}={value!r} is not a parameter of '{kind}' (its parameters: {valid}); "
            f"drop it, or set trigger.kind to a kind that takes it ({', '.join(takers)})"
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
