"""Every trigger kind's parameters (its ``Params``) and the one registry of trigger kinds.

A kind is a name, its pydantic ``Params`` (typed fields with bounds; units in the descriptions)
and, once :mod:`perturbd.triggers` is imported, the function that builds it and the
:class:`~perturbd.triggers.base.Trigger` class (its family) that applies it. This module imports
no torch, so that a config mistake is answered before torch loads; the kernels that build and
apply each kind live in ``triggers/<kind>.py``, which attach themselves to the kind registered
here with :func:`perturbd.triggers.register_trigger` (one registry line; a kind defined outside
perturbd passes its ``Params`` to that same call).

Each ``Params`` names its strength field (:attr:`TriggerParams.strength_key`, the one
``trigger.psnr`` / ``trigger.ssim`` searches) and its symbol in labels; the strength field's
``json_schema_extra["search"]`` holds the ``[low, high]`` bounds of that search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from perturbd.registry import Registry


class TriggerParams(BaseModel):
    """Base of each trigger kind's ``Params``.

    Class variables: ``strength_key`` (the field that sets how strong the trigger is), ``symbol``
    (its symbol in labels), ``needs_model`` (the kind is computed from the adversary's model),
    ``lighter_when_larger`` (a larger strength value makes a *less* visible trigger, as more colour
    levels do for ``bpp``; the visibility search's first step then goes the other way)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    strength_key: ClassVar[str] = "amplitude"
    symbol: ClassVar[str] = "c"
    needs_model: ClassVar[bool] = False
    lighter_when_larger: ClassVar[bool] = False

    @property
    def strength(self) -> float:
        return float(getattr(self, self.strength_key))

    @classmethod
    def search_bounds(cls) -> tuple[float, float]:
        """``(low, high)`` of the strength that a ``trigger.psnr`` / ``trigger.ssim`` search may try."""
        extra = cls.model_fields[cls.strength_key].json_schema_extra
        bounds = extra.get("search") if isinstance(extra, dict) else None
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise TypeError(f"{cls.__name__}.{cls.strength_key} needs json_schema_extra={{'search': [low, high]}}")
        return float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]

    def family(self, kind: str) -> str:
        """The kind of trigger without its size (``grid``, ``adaptive deepfool linf``)."""
        return kind

    def label(self, kind: str) -> str:
        """The display label: ``grid c=10``, ``patch 3px c=255``, ``wanet k=4 s=0.5``."""
        return f"{self.family(kind)} {self._before()}{self.symbol}={self.strength:g}{self._after()}"

    def _before(self) -> str:
        return ""

    def _after(self) -> str:
        return ""


def _amplitude(default: float = 10.0) -> Any:
    return Field(
        default,
        gt=0,
        le=255,
        description="mask amplitude c, pixel units 0–255; non-integral: seeded mix of floor(c), ceil(c)",
        json_schema_extra={"search": [1e-3, 255.0]},
    )


@dataclass
class Kind:
    """A registered trigger kind: its ``Params`` and ``about`` (one line: what it is, for
    ``perturbd trigger list``); ``build`` ``(params, ctx) -> Trigger`` and the ``family`` class
    are attached by :func:`perturbd.triggers.register_trigger`."""

    name: str
    params: type[TriggerParams]
    build: Callable[..., Any] | None = None
    family: type[Any] | None = None
    about: str = ""


KINDS: Registry[Kind] = Registry("trigger")


def register_params(name: str, about: str = "") -> Callable[[type[TriggerParams]], type[TriggerParams]]:
    """Class decorator: register the kind ``name`` with these ``Params`` and its one-line ``about``."""

    def add(params: type[TriggerParams]) -> type[TriggerParams]:
        KINDS.register(name)(Kind(name, params, about=about))
        return params

    return add


def params_of(kind: str) -> type[TriggerParams]:
    """The ``Params`` of ``kind``; a one-line ConfigError with a suggestion for an unknown kind."""
    return KINDS.get(kind).params


# --------------------------------------------------------------------------- static masks


class StaticParams(TriggerParams):
    amplitude: float = _amplitude()


_STATIC = {
    "grid": "static mask: +c on every other row and column (the paper's static pattern)",
    "chessboard": "static mask: ±c alternating pixel by pixel",
    "ring": "static mask: +c on a one-pixel circle centred in the image",
    "random": "static mask: ±c per pixel, drawn from the seed",
}
for _name, _about in _STATIC.items():
    register_params(_name, _about)(StaticParams)


@register_params("patch", "+c on a size × size square by the bottom-right corner (c = 255: a visible BadNets-style patch)")
class PatchParams(TriggerParams):
    amplitude: float = _amplitude()
    size: int = Field(3, ge=1, description="patch side in pixels")

    def _before(self) -> str:
        return f"{self.size}px "


@register_params("image", "your own mask file (PNG/NPY in pixel units, or a saved trigger), added as a static mask")
class ImageParams(TriggerParams):
    amplitude: float = _amplitude()
    path: Path | None = Field(
        None, description="mask file (PNG/NPY, pixel units, or a .safetensors trigger); a PNG is scaled to amplitude c"
    )

    def label(self, kind: str) -> str:
        return f"image {self.path.name if self.path else '?'}"


# --------------------------------------------------------------------------- computed from a model: adaptive mask, LF, Narcissus


class BudgetParams(TriggerParams):
    """A trigger computed from the adversary's model within a budget ξ (its strength)."""

    strength_key: ClassVar[str] = "budget"
    symbol: ClassVar[str] = "ξ"
    needs_model: ClassVar[bool] = True


def _budget(default: float, description: str, high: float = 10000.0) -> Any:
    return Field(default, gt=0, le=high, description=description, json_schema_extra={"search": [1.0, high]})


@register_params("adaptive", "the paper's adaptive mask: a targeted universal perturbation of budget ξ, computed on the adversary's model")
class AdaptiveParams(BudgetParams):
    method: Literal["deepfool", "deepfool_batched", "gradient"] = Field(
        "deepfool",
        description="adaptive mask algorithm: deepfool (the paper's, one sample at a time), "
        "deepfool_batched (faster, denser masks) or gradient",
    )
    norm: Literal["linf", "l2"] = Field("linf", description="budget norm of the adaptive mask")
    budget: float = _budget(10.0, "adaptive budget ξ, pixel units 0–255 (L2: over all pixels)")
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool overshoot")
    max_steps: int = Field(10, ge=1, description="DeepFool steps per sample and pass")
    passes: int = Field(5, ge=1, description="passes over the sample images")
    fooling_rate: float = Field(0.9, gt=0, le=1, description="stop when this fraction of samples goes to the target")
    samples: int = Field(1000, ge=1, description="images the adversary uses to compute the mask")
    lr: float = Field(2.0, gt=0, description="gradient method: step size, pixel units per step (L2: RMS per pixel)")
    batch_size: int = Field(64, ge=1, description="deepfool_batched and gradient: samples per vectorised update")

    def family(self, kind: str) -> str:
        return f"{kind} {self.method} {self.norm}"


@register_params("lf", "Zeng et al. 2021: a low-frequency universal perturbation of budget ξ toward the target, on the adversary's model")
class LFParams(BudgetParams):
    norm: Literal["linf", "l2"] = Field("linf", description="budget norm of the low-frequency mask")
    budget: float = _budget(
        25.0,
        "budget ξ, pixel units 0–255 (L2: over all pixels); the authors' code rescales its mask to a range of "
        "51 grey levels (0.2), a signed mask of that range has L∞ 25",
    )
    low_pass: Literal["gaussian", "ideal"] = Field(
        "gaussian", description="low-pass filter of every step: gaussian (the authors' code) or ideal (a sharp radial cut-off)"
    )
    sigma: float = Field(6.0, gt=0, le=100, description="gaussian filter: standard deviation, pixels (the authors' code: 6)")
    cutoff: float = Field(
        0.1, gt=0, le=0.75, description="ideal filter: radius kept, cycles per pixel (0.5 is the Nyquist frequency on each axis)"
    )
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool overshoot (the authors' code: 0.02)")
    max_steps: int = Field(200, ge=1, description="DeepFool steps per sample and pass (the authors' code: 200)")
    passes: int = Field(20, ge=1, description="passes over the sample images at most (the authors' code: until the fooling rate)")
    fooling_rate: float = Field(
        0.2, gt=0, le=1, description="stop when this fraction of samples goes to the target (the authors' code: 0.2)"
    )
    samples: int = Field(100, ge=1, description="images the adversary uses to compute the mask (the authors' code: 100)")

    def family(self, kind: str) -> str:
        return f"{kind} {self.low_pass} {self.norm}"


_MAGNIFICATION = "the trigger is multiplied by this at test time only (paper: 3); 1: tested as poisoned (equal visibility)"


@register_params("narcissus", "Zeng et al. 2023: a clean-label trigger optimised on target-class images of the adversary's surrogate")
class NarcissusParams(BudgetParams):
    norm: Literal["linf"] = Field("linf", description="budget norm: L∞, the only one of the paper")
    budget: float = _budget(16.0, "L∞ budget ξ, pixel units 0–255 (paper: 16)", high=255.0)
    samples: int = Field(5000, ge=1, description="target-class images of the adversary used, at most (paper: all 5,000 of CIFAR-10's)")
    warmup_epochs: int = Field(5, ge=0, description="poison warm-up: epochs of fine-tuning the surrogate on them (paper: 5)")
    warmup_lr: float = Field(0.1, gt=0, le=10, description="poison warm-up: RAdam learning rate (paper: 0.1)")
    epochs: int = Field(1000, ge=1, description="trigger optimisation: epochs over the target-class images (paper: 1000)")
    lr: float = Field(
        0.01, gt=0, le=10, description="trigger optimisation: RAdam learning rate, in the paper's units of images in [−1, 1] (paper: 0.01)"
    )
    batch_size: int = Field(350, ge=1, description="images per warm-up and optimisation step (paper: 350)")
    test_magnification: float = Field(1.0, ge=1, le=100, description=_MAGNIFICATION)

    def _after(self) -> str:
        return f" ×{self.test_magnification:g} at test" if self.test_magnification != 1 else ""


# --------------------------------------------------------------------------- blended, sig, wanet


def _alpha(default: float, description: str) -> Any:
    return Field(default, gt=0, lt=1, description=description, json_schema_extra={"search": [1e-4, 0.999]})


@register_params("blended", "Chen et al. 2017: the image blended with a noise or image pattern, x' = (1 − α)·x + α·p")
class BlendedParams(TriggerParams):
    strength_key: ClassVar[str] = "alpha"
    symbol: ClassVar[str] = "α"

    alpha: float = _alpha(0.2, "weight α of the pattern p in x' = (1 − α)·x + α·p, a fraction (Chen et al. 2017 train with 0.2)")
    path: Path | None = Field(None, description="blend image (resized to the images); default: seeded uniform noise")

    def _before(self) -> str:
        return f"{self.path.name} " if self.path else ""


_SIG_AMPLITUDE = (
    "peak Δ of the sinusoid (sig: default 20), or Δ of the ramp Δ·j/m (sig_ramp; the authors' MNIST code: 30); pixel units 0–255"
)


class SigRampParams(TriggerParams):
    strength_key: ClassVar[str] = "sig_amplitude"
    symbol: ClassVar[str] = "Δ"

    sig_amplitude: float = Field(20.0, gt=0, le=255, description=_SIG_AMPLITUDE, json_schema_extra={"search": [1e-3, 255.0]})


class SigParams(SigRampParams):
    frequency: float = Field(6.0, gt=0, description="periods f of the sinusoid across the image width (default 6)")

    def _after(self) -> str:
        return f" f={self.frequency:g}"


_SIG = {
    "sig": (SigParams, "Barni et al. 2019: a horizontal sinusoid of peak Δ added to the image"),
    "sig_ramp": (SigRampParams, "Barni et al. 2019: a horizontal ramp Δ·j/m added to the image (the authors' MNIST signal)"),
    "sig_wrap": (SigParams, "sig added modulo 256, as the authors' code casts to uint8 before clipping"),
    "sig_ramp_wrap": (SigRampParams, "sig_ramp added modulo 256, as the authors' code casts to uint8 before clipping"),
}
for _name, (_params, _about) in _SIG.items():
    register_params(_name, _about)(_params)


@register_params("wanet", "Nguyen & Tran 2021: an imperceptible warp of the image, with noise mode")
class WanetParams(TriggerParams):
    strength_key: ClassVar[str] = "warp_strength"
    symbol: ClassVar[str] = "s"

    grid_k: int = Field(4, ge=2, description="side k of the k×k grid of random offsets, control points (Nguyen & Tran 2021: 4)")
    warp_strength: float = Field(
        0.5,
        gt=0,
        le=10,
        description="strength s of the warp, offsets scaled by s/H in grid units of [-1, 1] (Nguyen & Tran 2021: 0.5)",
        json_schema_extra={"search": [1e-4, 10.0]},
    )
    noise_ratio: float = Field(
        2.0, ge=0, le=10, description="noise mode: noisy-warped images kept at their labels, per poisoned image (paper: 2); 0: off"
    )

    def _before(self) -> str:
        return f"k={self.grid_k} "


# --------------------------------------------------------------------------- ftrojan, bpp, adap_blend


@register_params("ftrojan", "Wang et al. 2022: a fixed magnitude on mid and high DCT frequencies of the UV (colour) channels")
class FtrojanParams(TriggerParams):
    strength_key: ClassVar[str] = "magnitude"
    symbol: ClassVar[str] = "m"

    magnitude: float = Field(
        20.0,
        gt=0,
        le=10000,
        description="added to each chosen DCT coefficient of each block (orthonormal DCT, pixel units 0–255; "
        "the authors' CIFAR-10 code: 20)",
        json_schema_extra={"search": [1e-2, 10000.0]},
    )
    window: int = Field(32, ge=2, description="side of the DCT blocks in pixels (paper: 32); images smaller than it are one block")


@register_params("bpp", "Wang, Zhai & Ma 2022 (BppAttack): colour depth squeezed to k levels with Floyd–Steinberg dithering")
class BppParams(TriggerParams):
    strength_key: ClassVar[str] = "squeeze_num"
    symbol: ClassVar[str] = "k"
    lighter_when_larger: ClassVar[bool] = True

    squeeze_num: float = Field(
        8.0,
        ge=2,
        le=256,
        description="colour levels k per channel, 255/(k − 1) apart (the authors' default: 8, i.e. 3 bits; their CIFAR-10 command: "
        "32; fewer: more visible); "
        "non-integral: a seeded mix of floor(k) and ceil(k) per pixel",
        json_schema_extra={"search": [2.0, 128.0]},
    )
    dithering: bool = Field(True, description="Floyd–Steinberg error diffusion (the paper's); false: plain rounding to the levels")

    def _after(self) -> str:
        return "" if self.dithering else " undithered"


@register_params("adap_blend", "Qi et al. 2023 (Adap-Blend): random halves of a blend pattern's patches, and cover images at their labels")
class AdapBlendParams(BlendedParams):
    """Blended's ``alpha`` (here the training weight) and ``path``, and Adap-Blend's own settings."""

    alpha: float = _alpha(0.15, "blend weight α of the poisoned and cover training images, a fraction (Qi et al. 2023: 0.15)")
    test_alpha: float | None = Field(
        None, gt=0, le=1, description="blend weight at test time, whole pattern; default α·4/3 (the paper's 0.2 at α = 0.15), at most 1"
    )
    pieces: int = Field(16, ge=1, le=1024, description="patches the pattern is cut into, a square number (paper: 16, a 4×4 grid)")
    mask_rate: float = Field(0.5, ge=0, lt=1, description="share of the patches left out of each training image (paper: 0.5)")
    cover_rate: float = Field(
        0.003, ge=0, lt=1, description="cover images per training image: triggered, labels kept (the paper's CIFAR-10 runs: 0.003)"
    )

    @field_validator("pieces")
    @classmethod
    def _square(cls, value: int) -> int:
        side = round(value**0.5)
        if side * side != value:
            raise ValueError("pieces must be a square number (4, 9, 16, …)")
        return value

    @property
    def test_weight(self) -> float:
        """The test-time blend weight: ``test_alpha``, or ``min(1, α·4/3)``."""
        return self.test_alpha if self.test_alpha is not None else min(1.0, self.alpha * 4 / 3)

    def family(self, kind: str) -> str:
        """``adap_blend test α=4/3·α``, or with the ``test_alpha`` set: in every label, so that a
        report says at which weight the ASR was measured."""
        return f"{kind} test α={'4/3·α' if self.test_alpha is None else f'{self.test_alpha:g}'}"

    def label(self, kind: str) -> str:
        return f"{kind} {self._before()}α={self.alpha:g} test α={self.test_weight:g}"
