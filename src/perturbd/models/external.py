"""Models perturbd did not build: a TorchScript file, your own Python factory, weights from elsewhere.

- ``model.name: torchscript:PATH``: a ``torch.jit.save`` file (it holds its weights).
- ``model.name: factory:package.module:fn``: ``fn`` returns a fresh ``nn.Module``; imported by name
  (the current folder is searched last), called with ``model.kwargs`` (its own arguments, e.g.
  ``{model_name: resnet18, num_classes: 10}`` for ``factory:timm:create_model``) and the keywords
  it declares among ``image_shape`` ``(C, H, W)`` and ``num_classes`` that ``model.kwargs`` does
  not give, once per model built, after the seed is set. Missing or unknown arguments, and an
  exception inside ``fn``, are one line (:func:`call_factory`).
- ``model.weights: PATH`` (with ``tv:<name>``, ``factory:`` or a perturbd architecture): the state
  dict it starts from, ``.safetensors`` or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``
  (``module.`` prefixes and a ``{"state_dict": ...}`` wrapper handled; nothing is unpickled).

Such a network is wrapped in :class:`ExternalModel`, a :class:`~perturbd.models.Classifier` like
every other: float images in [0, 1] in, logits out. How the network takes its input is stated by
the user (``model.input_range``, ``model.mean``, ``model.std``); unset, a third-party network or
third-party weights take [0, 1] images without normalisation, a perturbd checkpoint what it records,
and perturbd's own architectures their own (mean = std = 0.5).

:meth:`~ExternalModel.features` (for the dataset-screening defences) is the input of the network's
last ``nn.Linear`` (its final layer), or the output of the layer named by ``model.features``
(``--features``), flattened: read with a forward hook (from the compiled graph for TorchScript:
:mod:`perturbd.models.script`). :meth:`~ExternalModel.head` is that last linear layer, when the
features are its input and it gives the model's logits (checked once when built); otherwise the
model is not split: ``features()`` serves screening, and the logits come from calling the model.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perturbd.config import ModelConfig
from perturbd.errors import CheckpointError, ConfigError, PerturbdError
from perturbd.models.base import Builder, Classifier, check_fits, get_model, register_prefix
from perturbd.models.checkpoint import is_checkpoint, is_torchscript, load_model_weights
from perturbd.models.layers import check_layer, layer_names, read_layer, submodule
from perturbd.models.script import features_fn

# factories handed to perturbd.run(model=...) in this process, by "module:qualname"
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


class ExternalModel(Classifier):
    """A network perturbd did not build, as a :class:`Classifier` (see the module docstring).

    Args:
        net: the network: float images (as :meth:`set_input` states) → logits.
        image_shape: ``(C, H, W)`` of the data.
        num_classes: the data's class count (the network must give as many logits).
    """

    mean = 0.0  # no normalisation unless stated
    std = 1.0
    shape_hint = "give it data of the shape it takes (grey images reach an RGB network with three model.mean values)"

    def __init__(self, net: nn.Module, image_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(image_shape, num_classes)
        self.net = net
        linears = [n for n, m in net.named_modules() if n and getattr(m, "original_name", type(m).__name__) == "Linear"]
        self.last_linear = linears[-1] if linears else None
        self.final_layer = f"net.{self.last_linear}" if self.last_linear else "net"
        self.splits = self.last_linear is not None  # until checked by check_split

    @property
    def layers(self) -> nn.Module:
        return self.net

    @property
    def feature_dim(self) -> int:
        was_training = self.training
        self.eval()  # one blank image: batch norm in training mode would refuse a 1×1 map
        try:
            with torch.no_grad():
                return int(self.features(torch.zeros(1, *self.image_shape, device=_device(self))).shape[1])
        finally:
            self.train(was_training)

    def own_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The network's own state dict (as ``net.state_dict()`` writes it) in this model's keys."""
        return state if any(k.startswith("net.") for k in state) else {f"net.{k}": v for k, v in state.items()}

    def features(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        if isinstance(self.net, torch.jit.ScriptModule):
            return features_fn(self.net, self.feature_layer, self.arch)(x)
        if self.feature_layer is not None:
            return read_layer(self.net, self.feature_layer, lambda: self.net(x))
        if self.last_linear is None:
            names = ", ".join(layer_names(self.net)[:20])
            raise ConfigError(
                f"model '{self.arch}' has no nn.Linear final layer to read features before; "
                f"name a layer with model.features (--features): {names}"
            )
        return read_layer(self.net, self.last_linear, lambda: self.net(x), inputs=True)

    def head(self, f: Tensor) -> Tensor:
        if self.feature_layer is not None or not self.splits or self.last_linear is None:  # splits implies a last_linear
            raise ConfigError(f"model '{self.arch}' does not split into features and head at its final layer; call the model for logits")
        logits: Tensor = submodule(self.net, self.last_linear)(f)
        return logits

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(self.normalize(x))
        return logits

    def __setstate__(self, state: dict[str, object]) -> None:
        """After ``copy.deepcopy``: a copied TorchScript network's parameters come back as clones
        (not leaves), which no optimiser takes; make them leaves again."""
        super().__setstate__(state)  # type: ignore[no-untyped-call]  # torch leaves Module.__setstate__ unannotated
        for p in self.net.parameters() if isinstance(self.net, torch.jit.ScriptModule) else ():
            if not p.is_leaf:
                flag = p.requires_grad
                p.detach_().requires_grad_(flag)

    def check_split(self) -> None:
        """Whether the last linear layer gives the logits (a blank image, eval mode): ``splits``."""
        if not self.splits or self.feature_layer is not None:
            return
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, *self.image_shape, device=_device(self))
                self.splits = torch.allclose(self.head(self.features(x)), self(x), atol=1e-5)
        finally:
            self.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(0)).device


# --------------------------------------------------------------------------- the config's door


def build_model(
    spec: ModelConfig, image_shape: Sequence[int], num_classes: int, *, seed: int | None = None, weights: str | Path | None = None
) -> Classifier:
    """The model ``spec`` describes for this data: built (seeded as :func:`get_model`), its
    weights loaded (``weights``, e.g. a run's trained model, in place of ``model.weights``), its
    input and features layer set, and checked with a blank image.

    Raises:
        ConfigError, CheckpointError: one line, before any work (missing file, a layer that does
            not exist, a network of another input shape or class count, …).
    """
    check_spec(spec)
    model = get_model(spec.name, image_shape, num_classes, seed=seed, check=False, kwargs=spec.kwargs)
    weights = weights if weights is not None else spec.weights
    if weights is not None:
        third_party = not is_checkpoint(weights)
        load_model_weights(model, weights, replace_head=spec.replace_head)
        if third_party:
            model.set_input()
    state_input(model, spec.input_range, spec.mean, spec.std, spec.features)
    check_fits(model, model.image_shape)
    if isinstance(model, ExternalModel):
        model.check_split()
    return model


def state_input(
    model: Classifier,
    input_range: Sequence[float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    features: str | None = None,
    *,
    where: str = "model.",
) -> None:
    """Set what is stated of how ``model``'s network takes its input (:meth:`Classifier.set_input`;
    what is not stated keeps its value) and the layer its features are read at. ``where`` starts
    the names in errors (``model.`` for the config's keys)."""
    if (input_range, mean, std) != (None, None, None):
        channels = model.image_shape[0]
        for key, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, channels, 3 if channels == 1 else channels):
                rgb = " (or 3: grey images into an RGB network)" if channels == 1 else ""
                raise ConfigError(
                    f"{where}{key} has {len(values)} values for images of {channels} channel(s); give one, or one per channel{rgb}"
                )
        now: Mapping[str, Sequence[float]] = model.input_spec or {  # what is not stated stays
            "input_range": (0.0, 1.0), "mean": (model.mean,), "std": (model.std,),
        }  # fmt: skip
        model.set_input(input_range or now["input_range"], mean or now["mean"], std or now["std"])
    if features is not None:
        model.feature_layer = check_layer(model.layers, features, model.arch)


def check_spec(spec: ModelConfig) -> None:
    """What can be checked of ``spec`` without building it: the files it names exist."""
    prefix, _, rest = spec.name.partition(":")
    if prefix == "torchscript":
        torchscript_path(rest)
    if spec.weights is not None and not Path(spec.weights).expanduser().is_file():
        raise CheckpointError(f"model.weights not found: {spec.weights}; give a .safetensors, .pt or .pth state dict")


def spec_files(spec: ModelConfig) -> dict[str, Path]:
    """The files behind ``spec`` (weights, TorchScript file, the factory's source), for cache keys:
    the same name with other contents is another model."""
    prefix, _, rest = spec.name.partition(":")
    files = {"weights": spec.weights, "torchscript": Path(rest) if prefix == "torchscript" else None}
    if prefix == "factory":
        with contextlib.suppress(TypeError):  # a builtin: no source file
            files["factory"] = Path(inspect.getsourcefile(_factory(rest)) or "")
    return {k: Path(p).expanduser() for k, p in files.items() if p is not None and Path(p).expanduser().is_file()}


# --------------------------------------------------------------------------- torchscript:PATH


def torchscript_path(rest: str) -> Path:
    """The file of ``torchscript:PATH``; a one-line error if it is missing or not TorchScript."""
    path = Path(rest).expanduser()
    if not rest or not path.is_file():
        raise CheckpointError(f"TorchScript file not found: '{rest}'; write model.name as torchscript:PATH with a torch.jit.save file")
    if not is_torchscript(path):
        raise CheckpointError(
            f"{path} is not a TorchScript file (torch.jit.save); for a state dict name its architecture: "
            f"model.name=tv:NAME or factory:package.module:function with model.weights={path}"
        )
    return path


def _torchscript(rest: str) -> Builder:
    path = torchscript_path(rest)

    def build(image_shape: Sequence[int], num_classes: int) -> Classifier:
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, but still reads these files
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]  # torch leaves jit.load unannotated
        except RuntimeError as err:
            raise CheckpointError(f"{path} is not a readable TorchScript file ({str(err).strip().splitlines()[0][:120]})") from None
        return ExternalModel(net, image_shape, num_classes)

    return build


# --------------------------------------------------------------------------- factory:module:function


def register_factory(fn: Callable[..., nn.Module]) -> str:
    """Make ``fn`` (a module-level function or class) the model ``factory:<module>:<qualname>``
    in this process, without importing it again; returns that name."""
    if isinstance(fn, nn.Module) or not callable(fn):
        raise ConfigError(
            f"model= takes a function that returns a fresh nn.Module (perturbd builds one per model it trains), "
            f"got {'an nn.Module instance' if isinstance(fn, nn.Module) else type(fn).__name__}; wrap it: def make(): return MyNet()"
        )
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname:
        raise ConfigError(
            f"model= needs a function defined at the top level of a module (its name, module:function, names the model "
            f"in run directories and caches), got {qualname or fn!r}"
        )
    _FACTORIES[f"{module}:{qualname}"] = fn
    return f"factory:{module}:{qualname}"


def _factory(rest: str) -> Callable[..., nn.Module]:
    if rest in _FACTORIES:
        return _FACTORIES[rest]
    module, sep, qualname = rest.partition(":")
    if not (module and sep and qualname):
        raise ConfigError(f"model 'factory:{rest}' must be written factory:package.module:function")
    try:
        obj: object = _import(module)
    except ImportError as err:
        raise ConfigError(f"model 'factory:{rest}': cannot import '{module}' ({err}); put it on PYTHONPATH or install it") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model 'factory:{rest}': '{module}' has no '{qualname}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model 'factory:{rest}': '{qualname}' is a {type(obj).__name__}, not a function")
    return obj


def _import(module: str) -> object:
    """``importlib.import_module``, with the current folder searched last if it is not on the path
    (as ``uvicorn module:app`` does): ``factory:my_nets:make`` finds ``./my_nets.py``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        here = str(Path.cwd())
        if err.name != module.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module)


def _resolve_factory(rest: str) -> Builder:
    fn = _factory(rest)

    def build(image_shape: Sequence[int], num_classes: int, kwargs: Mapping[str, Any] | None = None) -> Classifier:
        net = call_factory(f"factory:{rest}", fn, image_shape, num_classes, kwargs or {})
        return ExternalModel(net, image_shape, num_classes)

    return build


def call_factory(
    name: str, fn: Callable[..., object], image_shape: Sequence[int], num_classes: int, kwargs: Mapping[str, Any]
) -> nn.Module:
    """``fn(**kwargs)``, with ``image_shape`` and ``num_classes`` added where ``fn`` declares them
    by name and ``kwargs`` does not give them. Arguments that do not fit ``fn``'s signature, an
    exception inside ``fn`` or a result that is not an ``nn.Module`` are one-line ConfigErrors."""
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        signature = None
    declared = signature.parameters if signature is not None else {}
    offered = {"image_shape": tuple(image_shape), "num_classes": num_classes}
    given = {**{k: v for k, v in offered.items() if k in declared and k not in kwargs}, **kwargs}
    short = getattr(fn, "__name__", "fn")
    if signature is not None:
        try:
            signature.bind(**given)
        except TypeError as err:
            first = next((p for p in declared.values() if p.default is inspect.Parameter.empty and p.name not in given), None)
            key = first.name if first is not None else "KEY"
            raise ConfigError(
                f"model '{name}' cannot be called with {_shown(given)} ({err}); give its arguments in model.kwargs, "
                f"e.g. --set model.kwargs.{key}=VALUE (from Python: model=functools.partial({short}, ...))"
            ) from None
    try:
        net = fn(**given)
    except PerturbdError:
        raise
    except Exception as err:  # the user's code: its message in one line, not its traceback
        lines = str(err).strip().splitlines() or [""]
        raise ConfigError(
            f"model '{name}' raised {type(err).__name__} when called with {_shown(given)}: {lines[0][:200]}; "
            f"call {short}(...) yourself to see where"
        ) from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model '{name}' returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def _shown(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"


register_prefix("torchscript", _torchscript)
register_prefix("factory", _resolve_factory, takes_kwargs=True)
