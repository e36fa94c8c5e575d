"""Typed experiment configuration: one pydantic model per YAML section.

Units are stated in every field's description. Amplitudes and budgets are in pixel units of the
0–255 scale; rates are fractions in [0, 1]. Every key can be set from the CLI with
``--set section.key=value`` (the value is parsed as YAML).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from perturbd.errors import ConfigError
from perturbd.knowledge import KNOWLEDGE, check_knowledge
from perturbd.registry import suggest


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
    name: str = Field("auto", description="architecture: see `perturbd models`; auto picks by image shape; tv:<torchvision name>; torchscript:PATH (a torch.jit.save file); factory:package.module:function (your code: returns a fresh nn.Module)")
    weights: Path | None = Field(None, description="state dict every model of this architecture starts from (pretrained or third-party): .safetensors, or .pt/.pth read with torch.load(weights_only=True)")
    replace_head: bool = Field(False, description="when model.weights' final layer has another class count than the data, train a new one (transfer learning); false: an error")
    features: str | None = Field(None, description="layer whose output, flattened, dataset screening reads (e.g. layer4); default: the final linear layer's input")
    input_range: tuple[float, float] | None = Field(None, description="pixel range the network takes, e.g. [0, 1] or [0, 255]; default [0, 1]")
    mean: list[float] | None = Field(None, min_length=1, description="subtracted per channel (one value or one per channel), in input_range units; default: none for torchscript:/factory: models and third-party weights, what a perturbd checkpoint records, else the architecture's own (0.5)")
    std: list[float] | None = Field(None, min_length=1, description="divided by per channel, in input_range units; default as for mean (1, or 0.5); what is not stated keeps its default")

    @field_validator("weights", "replace_head")
    @classmethod
    def _not_torchscript(cls, value: Any, info: ValidationInfo) -> Any:
        if value and str(info.data.get("name", "")).startswith("torchscript:"):
            raise ValueError("a TorchScript model holds its own weights and layers; drop it, or use tv:NAME / factory:... with model.weights")
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


# The field that sets how strong each kind is (the others: ``amplitude``), and its symbol in labels.
STRENGTH_KEYS = {"adaptive": "budget", "blended": "alpha", "sig": "sig_amplitude", "sig_ramp": "sig_amplitude", "sig_wrap": "sig_amplitude", "sig_ramp_wrap": "sig_amplitude", "wanet": "warp_strength"}
_SYMBOLS = {"budget": "ξ", "alpha": "α", "sig_amplitude": "Δ", "warp_strength": "s", "amplitude": "c"}


class TriggerConfig(Section):
    kind: str = Field("grid", description="grid, chessboard, ring, random, patch, image, adaptive, blended, sig, sig_ramp, sig_wrap, sig_ramp_wrap or wanet (see `perturbd trigger list`)")
    amplitude: float = Field(10.0, gt=0, le=255, description="static mask amplitude c, pixel units 0–255; non-integral: seeded mix of floor(c), ceil(c)")
    path: Path | None = Field(None, description="mask file for kind=image (PNG/NPY, pixel units, or a .safetensors trigger); blend image for kind=blended")
    size: int = Field(3, ge=1, description="patch side in pixels for kind=patch")
    # adaptive masks
    method: Literal["deepfool", "deepfool_batched", "gradient"] = Field(
        "deepfool", description="adaptive mask algorithm: deepfool (the paper's, one sample at a time), deepfool_batched (faster, denser masks) or gradient"
    )
    norm: Literal["linf", "l2"] = Field("linf", description="budget norm of the adaptive mask")
    budget: float = Field(10.0, gt=0, le=10000, description="adaptive budget ξ, pixel units 0–255 (L2: over all pixels)")
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool overshoot")
    max_steps: int = Field(10, ge=1, description="DeepFool steps per sample and pass")
    passes: int = Field(5, ge=1, description="passes over the sample images")
    fooling_rate: float = Field(0.9, gt=0, le=1, description="stop when this fraction of samples goes to the target")
    samples: int = Field(1000, ge=1, description="images the adversary uses to compute the mask")
    lr: float = Field(2.0, gt=0, description="gradient method: step size, pixel units per step (L2: RMS per pixel)")
    batch_size: int = Field(64, ge=1, description="deepfool_batched and gradient: samples per vectorised update")
    # blended, sig, wanet
    alpha: float = Field(0.2, gt=0, lt=1, description="blended: weight α of the pattern p in x' = (1 − α)·x + α·p, a fraction (Chen et al. 2017 train with 0.2)")
    sig_amplitude: float = Field(20.0, gt=0, le=255, description="sig: peak Δ of the sinusoid (default 20); sig_ramp: Δ of the ramp Δ·j/m (the authors' MNIST code: 30); the same for their _wrap kinds; pixel units 0–255")
    frequency: float = Field(6.0, gt=0, description="sig: periods f of the sinusoid across the image width (default 6)")
    grid_k: int = Field(4, ge=2, description="wanet: side k of the k×k grid of random offsets, control points (Nguyen & Tran 2021: 4)")
    warp_strength: float = Field(0.5, gt=0, le=10, description="wanet: strength s of the warp, offsets scaled by s/H in grid units of [-1, 1] (Nguyen & Tran 2021: 0.5)")
    noise_ratio: float = Field(2.0, ge=0, le=10, description="wanet noise mode: noisy-warped images kept at their labels, per poisoned image (paper: 2); 0: off")
    psnr: float | None = Field(None, gt=0, le=100, description="equal visibility: the strength (strength_key) searched so that the poisoned adversary's images have this mean PSNR (dB); in adversary.json")
    ssim: float | None = Field(None, gt=0, lt=1, description="equal visibility as psnr, by the mean SSIM of the poisoned images instead (a fraction; not with psnr)")

    @model_validator(mode="after")
    def _one_visibility(self) -> TriggerConfig:
        if self.psnr is not None and self.ssim is not None:
            raise ValueError(f"trigger.psnr ({self.psnr:g}) and trigger.ssim ({self.ssim:g}) both set the strength; keep one")
        return self

    @property
    def family(self) -> str:
        """The kind of trigger, without its size: ``grid``, ``adaptive deepfool linf``, ``wanet``."""
        return f"adaptive {self.method} {self.norm}" if self.kind == "adaptive" else self.kind

    @property
    def label(self) -> str:
        """The one display label of this trigger: ``grid c=10``, ``patch 3px c=255``,
        ``image mask.png``, ``adaptive deepfool linf ξ=10``, ``blended α=0.2``, ``sig Δ=20 f=6``,
        ``wanet k=4 s=0.5``, ``grid at PSNR 34.5 dB``."""
        if self.psnr is not None:
            return f"{self.family} at PSNR {self.psnr:g} dB"
        if self.ssim is not None:
            return f"{self.family} at SSIM {self.ssim:g}"
        if self.kind == "image":
            return f"image {self.path.name if self.path else '?'}"
        before = {"patch": f"{self.size}px ", "wanet": f"k={self.grid_k} ", "blended": f"{self.path.name} " if self.path else ""}.get(self.kind, "")
        after = f" f={self.frequency:g}" if self.kind in ("sig", "sig_wrap") else ""
        return f"{self.family} {before}{_SYMBOLS[self.strength_key]}={self.strength:g}{after}"

    @property
    def strength_key(self) -> str:
        """The field that sets how strong the trigger is: ``budget`` for adaptive masks, ``alpha``
        (blended), ``sig_amplitude`` (sig), ``warp_strength`` (wanet), else ``amplitude``."""
        return STRENGTH_KEYS.get(self.kind, "amplitude")

    @property
    def strength(self) -> float:
        """The size the label names: the field :attr:`strength_key` names (the PSNR or SSIM asked
        for, when the strength is set by ``psnr`` or ``ssim``)."""
        goal = self.psnr if self.psnr is not None else self.ssim
        return goal if goal is not None else getattr(self, self.strength_key)


class PoisonConfig(Section):
    rate: float = Field(0.05, gt=0, le=1, description="injection rate: poisoned / samples of the set")
    target: int = Field(0, ge=0, description="target label t")
    sources: Literal["all"] | list[int] = Field("all", description="classes whose images may be poisoned")
    quantize: bool = Field(True, description="round poisoned images to uint8, as an image file would")
    mode: Literal["dirty", "clean_label"] = Field("dirty", description="dirty: relabel poisoned images of other classes to the target; clean_label: poison target-class images only, labels kept")


class AttackConfig(Section):
    setting: Literal["before_training", "update"] = Field("before_training", description="the paper's two settings")
    knowledge: str = Field("full", description="what the adversary knows: " + "; ".join(f"{name} ({k.description})" for name, k in KNOWLEDGE.items()))
    surrogate: str = Field("auto", description="surrogate architecture for knowledge data/none")
    surrogate_steps: int = Field(1000, ge=1, le=10_000_000, description="optimiser steps at least, for the models the adversary trains itself (knowledge data/model/none)")
    aux_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training set held out as the adversary's auxiliary data")
    same_victim: bool = Field(True, description="hold the auxiliary data out of the victim's training under every knowledge level (and for static masks): the victim is the same model whatever the adversary knows; false: only when the adversary does not know the data")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="share of the adversary's own data kept out of its training and mask computation, to measure its accuracy and the mask's held-out fooling rate")
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
    threads: int | None = Field(None, ge=1, description="CPU threads, set by what runs the experiment (perturbd run, a sweep worker; from Python: perturbd.process.tune_process), never by fit; default: all cores")
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
        """First 8 hex digits of the SHA-256 of the canonical JSON of this config."""
        return config_hash(self)


def config_hash(cfg: BaseModel) -> str:
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
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
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'{suggest(str(loc[-1]), _field_names(model, loc[:-1]))}"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"config '{where}': {first['msg']}, got {first.get('input')!r}{more}"


def validate(data: dict[str, Any], model: type[BaseModel] = ExperimentConfig) -> Any:
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
    out = json.loads(json.dumps(data, default=str))
    for item in overrides:
        set_dotted(out, *parse_assignment(item, "--set takes section.key=value"))
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment config from an optional YAML file plus CLI overrides."""
    data = read_yaml(path) if path is not None else {}
    return validate(apply_overrides(data, overrides or []))


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
