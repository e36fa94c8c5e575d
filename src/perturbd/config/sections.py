"""The sections of an experiment config other than the trigger's, one pydantic model each.

Units are stated in every field's description. Amplitudes and budgets are in pixel units of the
0–255 scale; rates are fractions in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from perturbd.knowledge import KNOWLEDGE, check_knowledge
from perturbd.limits import MAX_CLASSES


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(Section):
    name: str = Field("mnist5k", description="data source: see `perturbd datasets`")
    root: Path = Field(Path("~/.cache/perturbd/data"), description="folder holding downloaded data")
    download: bool = Field(False, description="download torchvision data sets that are missing")
    train_limit: int | None = Field(None, ge=10, description="keep a seeded stratified subset of N training images")
    test_limit: int | None = Field(None, ge=10, description="keep a seeded stratified subset of N test images")


class ModelConfig(Section):
    name: str = Field(
        "auto",
        description="architecture: see `perturbd models`; auto picks by image shape; tv:<torchvision name>; "
        "torchscript:PATH (a torch.jit.save file); factory:package.module:function (your code: returns a fresh nn.Module)",
    )
    weights: Path | None = Field(
        None,
        description="state dict every model of this architecture starts from (pretrained or third-party): "
        ".safetensors, or .pt/.pth read with torch.load(weights_only=True)",
    )
    replace_head: bool = Field(
        False,
        description="when model.weights' final layer has another class count than the data, train a new one (transfer learning); "
        "false: an error",
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
        description="subtracted per channel (one value or one per channel), in input_range units; "
        "default: none for torchscript:/factory: models and third-party weights, what a perturbd checkpoint records, "
        "else the architecture's own (0.5)",
    )
    std: list[float] | None = Field(
        None,
        min_length=1,
        description="divided by per channel, in input_range units; default as for mean (1, or 0.5); what is not stated keeps its default",
    )

    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of a factory: model's function, e.g. {model_name: resnet18, num_classes: 10, in_chans: 1} "
        "for factory:timm:create_model; image_shape and num_classes are added where the function declares them and they are not here",
    )

    @field_validator("kwargs")
    @classmethod
    def _factory_only(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if value and not str(info.data.get("name", "")).strip().startswith("factory:"):
            raise ValueError("keyword arguments go to a factory:package.module:function model only; drop them or name a factory")
        return value

    @model_serializer(mode="wrap")
    def _no_empty_kwargs(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Configs without keyword arguments dump (and hash) as before the key existed."""
        out: dict[str, Any] = handler(self)
        if not out.get("kwargs"):
            out.pop("kwargs", None)
        return out

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


class PoisonConfig(Section):
    rate: float = Field(0.1, gt=0, le=1, description="injection rate: poisoned / samples of the set (0.1: BackdoorBench's default)")
    target: int = Field(0, ge=0, lt=MAX_CLASSES, description="target label t (a class index, below 100,000)")
    sources: Literal["all"] | list[int] = Field("all", description="classes whose images may be poisoned")
    quantize: bool = Field(True, description="round poisoned images to uint8, as an image file would")
    mode: Literal["dirty", "clean_label"] = Field(
        "dirty",
        description="dirty: relabel poisoned images of other classes to the target; "
        "clean_label: poison target-class images only, labels kept",
    )

    @field_validator("rate", mode="before")
    @classmethod
    def _poisons(cls, value: object) -> object:
        """A rate of 0 is not a run; the line names the command that trains without poison."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise PydanticCustomError(
                "one_line",
                "poison.rate must be above 0 (a run poisons its training set), got 0; to train a plain model on a folder "
                "(an export) and measure a trigger: perturbd train FOLDER --trigger FILE --target T",
            )
        return value


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
        description="hold the auxiliary data out of the victim's training under every knowledge level (and for static masks): "
        "the victim is the same model whatever the adversary knows; false: only when the adversary does not know the data",
    )
    holdout_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="share of the adversary's own data kept out of its training and mask computation, "
        "to measure its accuracy and the mask's held-out fooling rate",
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
    epochs: int = Field(20, ge=1, le=1000, description="passes over the training set (20: the default experiment's recipe)")
    batch_size: int = Field(128, ge=1, le=65536)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant", "linear", "triangle"] = Field(
        "cosine", description="lr decay after warm-up; linear: to 0; triangle: 0.2 → 1 over the warm-up, then linearly to 0.07 (airbench's)"
    )
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of the optimiser steps over which lr rises linearly to train.lr")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing ε (0: none)")
    augment: Literal["auto", "none", "crop_flip", "crop", "shift_flip"] = Field(
        "auto", description="auto: crop+flip for colour, none for grey; shift_flip: shift ≤ 2 px (mirrored borders) + alternating flip"
    )
    lookahead: bool = Field(
        False,
        description="every 5 steps the weights move to their running average (decay 0.95⁵·(step/steps)³); "
        "the final weights are the average",
    )
    bias_lr_scale: float = Field(
        1.0, gt=0, le=1000, description="lr multiplier of the normalisation layers' biases (their weight decay per step unchanged)"
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads (at most 1024), set by what runs the experiment (perturbd run, a sweep worker; "
        "from Python: perturbd.process.tune_process), never by fit; default: all cores",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the model for training (pays a one-off compile time)")
    deterministic: bool = Field(False, description="PyTorch's deterministic algorithms (GPU runs repeat exactly; slower)")

    @model_serializer(mode="wrap")
    def _newer_keys_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Keys added after runs were committed are left out at their defaults, so an older
        config keeps its hash (its run folder and clean twin)."""
        out: dict[str, Any] = handler(self)
        for key, default in (("lookahead", False), ("bias_lr_scale", 1.0)):
            if out.get(key) == default:
                out.pop(key, None)
        return out


LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DefenseSpec(Section):
    """One defence of a config: the registered ``name``, its ``params`` and, for a variant beside
    the defence's own defaults, the ``label`` it is reported under (e.g. ``{name:
    spectral_signature, label: spectral_signature_k5, params: {components: 5}}``): the report,
    the matrix's column and the figures' file names use :attr:`report_name`. A label left unset
    is not hashed, so a config written before labels keeps its hash."""

    name: str = Field(description="a registered defence: see `perturbd defenses`")
    label: str | None = Field(
        None,
        pattern=LABEL_PATTERN,
        description="the name it is reported under (default: name): letters, digits, '_', '.', '-', at most 64",
    )
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def report_name(self) -> str:
        """The name in the report and the matrix: the label, else the defence's name."""
        return self.label or self.name

    @model_serializer(mode="wrap")
    def _no_unset_label(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("label") is None:
            out.pop("label", None)
        return out


def repeated_report_name(specs: Sequence[DefenseSpec]) -> str | None:
    """One line naming the first report name two of ``specs`` share; None when all differ."""
    seen: set[str] = set()
    for spec in specs:
        if spec.report_name in seen:
            return (
                f"two defences are reported as '{spec.report_name}'; give one a label of its own, "
                f"e.g. {{name: {spec.name}, label: {spec.name}_2, params: {{...}}}}"
            )
        seen.add(spec.report_name)
    return None
