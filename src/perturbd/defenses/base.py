"""The two defence protocols, the defence registry and the helpers every defence shares.

Defences follow scikit-learn's shape: parameters go in ``__init__`` and are validated there (a
bad value is a one-line :class:`~perturbd.errors.ConfigError` naming the parameter, the value and
the valid range); ``fit(model, data)`` does the work and returns ``self``; results end in ``_``.

- A :class:`Detector` produces ``scores_`` (higher = more suspicious) and ``flagged_`` (bool).
  Its ``kind`` says what is scored: ``"dataset"`` (one score per training image: which samples
  are poisoned), ``"input"`` (inputs at inference: :meth:`score` / :meth:`flag` after a ``fit``
  on clean images) or ``"model"`` (one score per label: is the model backdoored, toward which).
- A :class:`Mitigator` (``kind = "mitigation"``) repairs a model from clean images: ``model_``
  is the repaired copy (the input model is never modified).

Every defence reports ``clean_used_``, the number of clean images it needed (0 for dataset
screening, which inspects the training set itself).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol, get_args, get_origin, runtime_checkable

import annotated_types as at
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.registry import Registry, suggest

KINDS = ("dataset", "input", "model", "mitigation")


class DefenseParams(BaseModel):
    """Base of each defence's ``Params``: typed fields with bounds; units in the descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_range(field: Any) -> str:
    """``"in [1, 1000]"``, ``"> 0"``, ``"one of 'pca', 'ica'"``: what a field accepts, for messages."""
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(field.annotation))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    kind = getattr(field.annotation, "__name__", str(field.annotation))
    return f"a valid {kind}"


def check_params(defense: str, model: type[DefenseParams], params: dict[str, Any]) -> DefenseParams:
    """Validate ``params`` against ``model``; one line naming the parameter, value and range."""
    for key in params:
        if key not in model.model_fields:
            raise ConfigError(f"unknown parameter '{key}' for defense '{defense}'{suggest(key, list(model.model_fields))}")
    try:
        return model.model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "params"
        field = model.model_fields.get(key)
        rng = _valid_range(field) if field is not None else "valid"
        raise ConfigError(f"{defense}.{key} must be {rng}, got {params.get(key)!r}") from None


class Defense:
    """Base of every defence: stores validated parameters as attributes of the same names."""

    name: ClassVar[str] = "defense"
    kind: ClassVar[str] = "model"
    Params: ClassVar[type[DefenseParams]] = DefenseParams

    def __init__(self, **params: Any) -> None:
        checked = check_params(self.name, self.Params, params)
        for key, value in checked.model_dump().items():
            setattr(self, key, value)
        self.clean_used_ = 0

    def get_params(self) -> dict[str, Any]:
        """The parameters as built (defaults filled in), JSON-serialisable."""
        return {key: getattr(self, key) for key in self.Params.model_fields}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


@runtime_checkable
class Detector(Protocol):
    """Screens a data set, inputs or a model. After ``fit``: ``scores_`` and ``flagged_``."""

    kind: ClassVar[str]
    clean_used_: int

    def fit(self, model: nn.Module, data: ImageDataset) -> Detector: ...


@runtime_checkable
class Mitigator(Protocol):
    """Repairs a model from clean images. After ``fit``: ``model_`` and ``clean_used_``."""

    kind: ClassVar[str]
    clean_used_: int

    def fit(self, model: nn.Module, data: ImageDataset) -> Mitigator: ...


# --------------------------------------------------------------------------- registry

_DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defence under its ``name``; a duplicate raises ``ValueError``."""
    if cls.kind not in KINDS:
        raise ValueError(f"defense '{cls.name}' has kind '{cls.kind}'; use one of {', '.join(KINDS)}")
    return _DEFENSES.register(cls.name)(cls)


def list_defenses(pattern: str = "*") -> list[str]:
    """Registered defence names matching the shell-style ``pattern``, sorted."""
    return _DEFENSES.names(pattern)


def get_defense(name: str) -> type[Defense]:
    """The defence class called ``name``; a :class:`ConfigError` with a suggestion if unknown."""
    return _DEFENSES.get(name)


def build_defense(name: str, **params: Any) -> Defense:
    """Build (and validate) the defence ``name`` with ``params``.

    Example:
        >>> from perturbd.defenses import build_defense
        >>> build_defense("spectral_signature", epsilon=0.05).epsilon
        0.05
    """
    return get_defense(name)(**params)


# --------------------------------------------------------------------------- shared helpers


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def require_features(model: nn.Module, defense: str) -> None:
    if not callable(getattr(model, "features", None)) or not callable(getattr(model, "head", None)):
        raise ConfigError(f"defense '{defense}' needs a model with features() and head() (a perturbd model); got {type(model).__name__}")


@torch.no_grad()
def penultimate(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model.features`` of uint8 or float [0, 1] images, float32 ``(N, D)`` on the CPU (eval mode)."""
    device = model_device(model)
    model.eval()
    outs = [model.features(to_float01(images[i : i + batch_size].to(device))).flatten(1).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def take(data: ImageDataset, n: int) -> ImageDataset:
    """The first ``min(n, len(data))`` images (the caller hands a pre-shuffled clean slice)."""
    return data if n >= len(data) else data.subset(torch.arange(n))


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode; the original is never modified by a mitigation."""
    out = copy.deepcopy(model)
    out.eval()
    return out


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with fresh weights drawn from ``seed`` (a new student)."""
    out = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in out.modules():
        reset: Callable[[], None] | None = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return out
