"""The defence protocols (one per kind), the defence registry and the helpers every defence shares.

Defences follow scikit-learn's shape: parameters go in ``__init__`` and are validated there (a
bad value is a one-line :class:`~perturbd.errors.ConfigError` naming the parameter, the value and
the valid range); ``fit`` does the work and returns ``self``; results end in ``_``.

A defence's ``kind`` names the protocol its fitted results follow, which is all its evaluation
reads; the table of kinds (protocol, evaluation, report cell) is
:data:`perturbd.evaluation.kinds.KINDS`:

- ``"dataset"`` (:class:`DatasetScreen`): one score per training image, which are poisoned.
- ``"input"`` (:class:`InputScreen`): screens inputs at inference after a ``fit`` on clean images.
- ``"model"`` (:class:`ModelInspector`): one anomaly index per label, is the model backdoored.
- ``"mitigation"`` (:class:`Mitigator`): ``model_`` is a repaired copy (the input is untouched).
- ``"update"`` (:class:`UpdateAuditor`): did an update (``before`` → ``model``) plant a backdoor.
- ``"training"`` (:class:`TrainingDefense`): trains the victim itself on the poisoned training set,
  from its initial weights and with its recipe; ``model_`` is the model it trained.

Every defence reports ``clean_used_``, the number of clean images it needed (0 for dataset
screening, which inspects the training set itself, and for a training-time defence).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, cast, get_args, get_origin, runtime_checkable

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perturbd.config import TrainConfig
from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.errors import ConfigError
from perturbd.fields import bounds_text
from perturbd.models import model_device
from perturbd.progress import stage
from perturbd.registry import Registry, suggest
from perturbd.seeding import derived_seed


class DefenseParams(BaseModel):
    """Base of each defence's ``Params``: typed fields with bounds; units in the descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _valid_range(field: Any) -> str:
    """``"in [1, 1000]"``, ``"> 0"``, ``"one of 'pca', 'ica'"``: what a field accepts, for messages."""
    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(field.annotation))
    kind = getattr(field.annotation, "__name__", str(field.annotation))
    return bounds_text(field, ">=", "<=") or f"a valid {kind}"


def trace_modules(model: nn.Module, images: torch.Tensor, note: Callable[[str, nn.Module, object], None]) -> None:
    """One eval-mode forward pass of ``images`` (uint8 or float in [0, 1]) with ``note(name, module,
    output)`` called for every submodule as it runs; hooks removed and the mode restored after."""
    hooks = [m.register_forward_hook(lambda mod, _i, out, n=name: note(n, mod, out)) for name, m in model.named_modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(to_float01(images.to(model_device(model))))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


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

    if TYPE_CHECKING:
        # Each parameter of ``Params`` becomes an attribute in ``__init__`` (the setattr loop above),
        # which mypy cannot follow; this tells it those attributes exist. Type checking only: at run
        # time a missing attribute still raises AttributeError as usual.
        def __getattr__(self, name: str) -> Any: ...

    def rng_seed(self) -> int:
        """The seed this defence draws from: its ``seed`` parameter, or when that is None (the
        default) one derived from run seed 0 (:func:`seed_from_run` fills it from a run's seed)."""
        seed = getattr(self, "seed", None)
        return derived_seed(0, f"defense:{self.name}") if seed is None else int(seed)

    def get_params(self) -> dict[str, Any]:
        """The parameters as built (defaults filled in), JSON-serialisable."""
        return {key: getattr(self, key) for key in self.Params.model_fields}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


@runtime_checkable
class DatasetScreen(Protocol):
    """Screens the training set as trained on: per image, ``scores_`` (higher = more suspicious)
    and ``flagged_`` (bool, the method's own threshold)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    scores_: torch.Tensor
    flagged_: torch.Tensor

    def fit(self, model: nn.Module, data: ImageDataset) -> DatasetScreen: ...


@runtime_checkable
class InputScreen(Protocol):
    """Screens inputs at inference. ``fit`` on clean images sets ``threshold_`` so that about
    ``frr`` (false rejection rate) of clean inputs are flagged; ``scores_`` / ``flagged_`` are
    those calibration images'. It may also set ``facts_`` (optional): what it used, JSON-ready,
    copied into the report's metrics (STRIP: overlay and calibration images, calibration FPR)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    frr: float
    threshold_: float
    scores_: torch.Tensor
    flagged_: torch.Tensor

    def fit(self, model: nn.Module, data: ImageDataset) -> InputScreen: ...
    def score(self, images: torch.Tensor) -> torch.Tensor: ...
    def flag(self, images: torch.Tensor) -> torch.Tensor: ...
    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Which of these :meth:`score` outputs are flagged: ``flag(x) == flag_scores(score(x))``,
        so that an evaluation that has the scores does not screen the images twice."""
        ...


Figures = dict[str, Callable[[Path], None]]


@runtime_checkable
class ModelInspector(Protocol):
    """Inspects a model from clean images: per label, ``scores_`` (anomaly index; above
    ``anomaly_threshold`` flags the label), ``flagged_`` (bool) and ``flagged_labels_``;
    ``evidence_`` maps a name to one JSON value per label (what the index was computed from);
    ``figures()`` draws what was found (file name → draw into that path); ``facts_`` (optional,
    JSON-ready) is copied into the report's metrics (Neural Cleanse: the clean images drawn from)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    anomaly_threshold: float
    scores_: torch.Tensor
    flagged_: torch.Tensor
    flagged_labels_: list[int]
    evidence_: dict[str, list[Any]]
    seconds_: float

    def fit(self, model: nn.Module, data: ImageDataset) -> ModelInspector: ...
    def figures(self) -> Figures: ...


@runtime_checkable
class Mitigator(Protocol):
    """Repairs a model from clean images: ``model_`` is the repaired copy. It may also set
    ``facts_`` (optional): what the repair did, JSON-ready, copied into the report's metrics; its
    ``summary`` (text) joins the matrix cell (fine-pruning: how many channels it pruned)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    model_: nn.Module

    def fit(self, model: nn.Module, data: ImageDataset) -> Mitigator: ...


@runtime_checkable
class UpdateAuditor(Protocol):
    """Compares a model before and after an update on clean images: per label, ``rows_`` (verdict
    and evidence, JSON-ready), ``scores_`` (higher = more suspicious), ``flagged_`` (bool);
    ``suspicious_labels_``; ``figures()`` draws the evidence of the suspicious labels."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    rows_: list[dict[str, Any]]
    scores_: torch.Tensor
    flagged_: torch.Tensor
    suspicious_labels_: list[int]
    seconds_: float

    def fit(self, model: nn.Module, data: ImageDataset, *, before: nn.Module) -> UpdateAuditor: ...
    def figures(self) -> Figures: ...


@runtime_checkable
class TrainingDefense(Protocol):
    """Trains the victim on the poisoned training set so that no backdoor comes out: ``fit`` takes
    the victim's initial weights (a model, copied, or a function returning a fresh one), the
    training set as the victim trains on it and the victim's recipe (``train``: optimiser,
    epochs, batch size, augmentation, device); ``model_`` is the model it trained, measured
    against the one trained plainly; ``isolated_`` the positions in the training set it set apart
    as suspected poison (empty when it sets none apart). It may also set ``facts_`` (optional,
    JSON-ready; its ``summary`` joins the matrix cell), as a :class:`Mitigator`."""

    name: ClassVar[str]
    kind: ClassVar[str]
    clean_used_: int
    model_: nn.Module
    isolated_: torch.Tensor

    def fit(self, model: nn.Module | Callable[[], nn.Module], data: ImageDataset, train: TrainConfig) -> TrainingDefense: ...


# --------------------------------------------------------------------------- registry

_DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Class decorator: register a defence under its ``name``; a duplicate raises ``ValueError``.
    Its ``kind`` is looked up when it is evaluated (:func:`perturbd.evaluation.kinds.kind_of`);
    the contract tests check that every registered defence's kind has a row there."""
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


def require_features(model: nn.Module, defense: str) -> None:
    if not callable(getattr(model, "features", None)) or not callable(getattr(model, "head", None)):
        raise ConfigError(
            f"defense '{defense}' needs a model with features() and head() (a perturbd model), got {type(model).__name__}; "
            "wrap it: perturbd.wrap(net, image_shape, ...)"
        )


@torch.no_grad()
def penultimate(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model.features`` of uint8 or float [0, 1] images, float32 ``(N, D)`` on the CPU (eval mode);
    progress to the active monitor, one step per batch."""
    device = model_device(model)
    model.eval()
    # nn.Module.__getattr__ is typed Tensor | Module; ``features`` is a method (see require_features)
    features = cast(Callable[[torch.Tensor], torch.Tensor], model.features)
    with stage("features", -(-len(images) // batch_size)) as progress:
        starts = progress.over(range(0, len(images), batch_size))
        outs = [features(to_float01(images[i : i + batch_size].to(device))).flatten(1).float().cpu() for i in starts]
    return torch.cat(outs) if outs else torch.empty(0)


def take(data: ImageDataset, n: int) -> ImageDataset:
    """The first ``min(n, len(data))`` images (the caller hands a pre-shuffled clean slice)."""
    return data if n >= len(data) else data.subset(torch.arange(n))


def seed_from_run(defense: Defense, run_seed: int) -> None:
    """Set an unset (None) ``seed`` parameter of ``defense`` to
    ``derived_seed(run_seed, "defense:<name>")``; a seed the user set is kept."""
    if "seed" in defense.Params.model_fields and getattr(defense, "seed", None) is None:
        # setattr, as __init__ sets parameters: the TYPE_CHECKING __getattr__ covers reads only
        setattr(defense, "seed", derived_seed(run_seed, f"defense:{defense.name}"))  # noqa: B010


class ShareBoundParams(DefenseParams):
    """The parameters a per-class dataset screen shares (spectral signatures, SPECTRE): ``epsilon``,
    the bound on the poisoned share of a class, and where it comes from (:func:`epsilon_from_truth`)."""

    epsilon: float = Field(0.1, gt=0, lt=1, description="upper bound on the poisoned fraction of a class")
    epsilon_source: Literal["given", "oracle"] = Field(
        "given",
        description="given: epsilon as set; oracle: the run's true poisoned share of the target class, "
        "set by the evaluation from the ground truth (an upper-bound experiment)",
    )


def epsilon_from_truth(defense: Defense, share: float | None) -> None:
    """Set ``epsilon`` of a defence whose ``epsilon_source`` parameter is ``"oracle"`` to
    ``share``, the run's true poisoned share of the target class (the evaluation knows it from the
    ground truth); a one-line :class:`ConfigError` when the run has none. Other defences: nothing."""
    if getattr(defense, "epsilon_source", None) != "oracle":
        return
    if share is None:
        raise ConfigError(
            f"{defense.name}.epsilon_source=oracle needs the run's poison indices (a run directory or an experiment); "
            "set epsilon_source=given and epsilon to a bound"
        )
    setattr(defense, "epsilon", share)  # noqa: B010  (as seed_from_run: __init__ sets parameters)


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode; the original is never modified by a mitigation."""
    out = copy.deepcopy(model)
    out.eval()
    return out


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with fresh weights drawn from ``seed`` (a new student)."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise ConfigError(
            "a TorchScript model cannot be re-initialised (its layers keep no reset_parameters); give its state dict with --arch"
        )
    out = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in out.modules():
        reset: Callable[[], None] | None = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    return out
