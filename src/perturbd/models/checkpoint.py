"""Model weights on disk: safetensors files with the architecture in their metadata.

Nothing is unpickled: ``.safetensors`` files are read as they are; a PyTorch ``.pt``/``.pth``
file is read only when ``torch.load(weights_only=True)`` accepts it and it holds a plain state
dict. Every failure is a one-line :class:`~perturbd.errors.CheckpointError` naming the file, what
it holds and what was expected.

Metadata written by :func:`save_model` (all strings): ``format`` = ``perturbd.model``, ``arch``
(a :func:`~perturbd.models.get_model` name), ``image_shape`` (``"1x28x28"``), ``num_classes``,
``input`` (JSON of :meth:`~perturbd.models.Classifier.set_input`'s arguments, when they were
stated), plus the caller's own keys.

Weights of another layout load too: a ``torch.nn.DataParallel`` state (``module.`` prefixes), a
``{"state_dict": ...}`` wrapper, and the plain network's own keys (a torchvision ``state_dict()``
into ``tv:``; see :meth:`~perturbd.models.Classifier.own_state`).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from perturbd.errors import CheckpointError, ConfigError
from perturbd.models.base import Classifier, get_model
from perturbd.tensorfile import save_tensors
from perturbd.trust import USER_CODE

FORMAT = "perturbd.model"
_RESERVED = ("format", "arch", "image_shape", "num_classes")
# USER_CODE: the arch prefixes a checkpoint may not make perturbd load by itself (perturbd.trust)
_CONVERT = (
    "only .safetensors weights are read; convert a plain state dict with "
    'python -c "import torch, safetensors.torch as st; '
    "st.save_file(torch.load('IN.pt', weights_only=True), 'OUT.safetensors')\""
)


def save_model(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, with its architecture in the metadata.

    The file is written next to ``path`` and renamed into place, so it is either whole or absent;
    the same weights and metadata give the same bytes (:mod:`perturbd.tensorfile`).

    Args:
        model: a :class:`Classifier` built by :func:`~perturbd.models.get_model` (it knows its
            ``arch``); ``torch.compile`` and ``DataParallel`` wrappers are unwrapped.
        path: destination, conventionally ``*.safetensors``; parent folders are created.
        metadata: extra string → string entries (seed, config hash, …); the reserved keys
            ``format``, ``arch``, ``image_shape``, ``num_classes`` are filled from the model.

    Returns:
        The path written.
    """
    model = _unwrap(model)
    if not isinstance(model, Classifier) or not model.arch:
        raise TypeError(f"save_model needs a model built by get_model (it records the architecture), got {type(model).__name__}")
    extra = dict(metadata or {})
    bad = [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"checkpoint metadata must map str to str, got non-string entries for {bad[:3]}")
    meta = _model_meta(model)
    clash = [k for k in _RESERVED if k in extra and extra[k] != meta[k]]
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved and filled from the model; rename them")
    if model.input_spec is not None:
        meta["input"] = json.dumps(model.input_spec)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return save_tensors(Path(path), tensors, {**extra, **meta})


def checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a safetensors file (empty if it has none)."""
    path = _existing(path)
    if _sniff(path) != "safetensors":
        raise CheckpointError(f"{path} is not a safetensors file; {_CONVERT}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({_reason(err)}); it is truncated or corrupt") from None


def load_model_weights(model: nn.Module, path: str | os.PathLike[str], *, replace_head: bool = False) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return it.

    A perturbd checkpoint that records how its model takes its input (``input``) sets it on the
    model. ``replace_head``: a final layer of another class count in the file is not loaded (the
    model's own, freshly initialised, is kept: transfer learning); without it, it is an error.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, not safetensors (and not a
            plain state dict that ``torch.load(weights_only=True)`` reads), or holds another
            architecture, image shape or class count (its metadata and its key/shape sets are
            compared with the model's).
    """
    path = _existing(path)
    state, meta = read_weights(path)
    target = _unwrap(model)
    if isinstance(target, Classifier):
        want = _model_meta(target)
        if any(k in meta and (k != "arch" or want[k]) and meta[k] != want[k] for k in _RESERVED[1:]):
            fix = (
                f"set model.name={meta['arch']} or build it with build_from_checkpoint()"
                if meta.get("arch", want["arch"]) != want["arch"]
                else "it was trained on other data: use a checkpoint of this data, or build_from_checkpoint()"
            )
            raise CheckpointError(f"{path} holds {_describe(meta)}, not {_describe(want)}; {fix}")
        state = _head(target, target.own_state(state), path, replace_head)
    _check_keys(target, state, path, meta)
    target.load_state_dict(state)
    if isinstance(target, Classifier) and "input" in meta:
        try:
            target.set_input(**json.loads(meta["input"]))
        except (ValueError, TypeError):
            raise CheckpointError(f"{path} has malformed metadata input={meta['input'][:80]!r}; it is corrupt") from None
    return model


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict in ``path`` (``module.`` prefixes dropped) and its metadata (empty for .pt)."""
    path = _existing(path)
    kind = _sniff(path)
    if kind == "safetensors":
        state, meta = _read_safetensors(path)
    elif is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript file, not a state dict: name it as the model (model.name=torchscript:{path}; no --arch)"
        )
    elif kind == "torch":
        state, meta = _read_torch(path), {}
    else:
        raise CheckpointError(f"{path} is not a safetensors file (nor a PyTorch one); {_CONVERT}")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, meta


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (it holds code, not only tensors)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in zf.namelist())


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model file written by :func:`save_model` (it records its architecture)."""
    path = _existing(path)
    return _sniff(path) == "safetensors" and checkpoint_metadata(path).get("format") == FORMAT


def _head(model: Classifier, state: dict[str, Tensor], path: Path, replace: bool) -> dict[str, Tensor]:
    """``state`` with the model's own final layer where the file's has another class count and
    ``replace`` says so; a one-line error where it does not."""
    own = model.state_dict()
    keys = [k for k in own if k.startswith(f"{model.final_layer}.")]
    differ = [k for k in keys if k in state and state[k].shape[1:] == own[k].shape[1:] and state[k].shape[:1] != own[k].shape[:1]]
    if not differ or len(differ) != len(
        [k for k in keys if k in state and state[k].shape != own[k].shape]
    ):  # other mismatches: _check_keys
        return state
    if not replace:
        theirs = state[differ[0]].shape[0]
        raise CheckpointError(
            f"{path}: its final layer '{model.final_layer}' gives {theirs} classes, the data has {model.num_classes}; "
            "set model.replace_head=true to train a new final layer from these weights (transfer learning)"
        )
    return {**state, **{k: own[k] for k in keys}}


def build_from_checkpoint(path: str | os.PathLike[str]) -> Classifier:
    """Build the architecture recorded in ``path``'s metadata and load its weights.

    The global RNG is left as it was (the random initial weights are overwritten anyway).
    """
    meta = checkpoint_metadata(path)
    missing = [k for k in _RESERVED[1:] if k not in meta]
    if missing:
        raise CheckpointError(
            f"{path} has no {'/'.join(missing)} metadata, so its architecture is unknown; "
            "build the model with get_model(name, image_shape, num_classes) and call load_model_weights"
        )
    if meta["arch"].partition(":")[0] in USER_CODE:
        raise CheckpointError(
            f"{path} holds a model of '{meta['arch']}' (user code or a TorchScript file): perturbd does not load those on "
            f"a file's word; name it yourself (--arch {meta['arch']}, or model.name with model.weights)"
        )
    try:
        shape = tuple(int(s) for s in meta["image_shape"].split("x"))
        num_classes = int(meta["num_classes"])
    except ValueError:
        raise CheckpointError(
            f"{path} has malformed metadata image_shape={meta['image_shape']!r} num_classes={meta['num_classes']!r}; "
            "expected e.g. '1x28x28' and '10'"
        ) from None
    try:
        with torch.random.fork_rng(devices=[]):
            model = get_model(meta["arch"], shape, num_classes)
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot build its model: {err}") from None
    load_model_weights(model, path)
    return model


def _model_meta(model: Classifier) -> dict[str, str]:
    return {
        "format": FORMAT,
        "arch": model.arch,
        "image_shape": "x".join(str(s) for s in model.image_shape),
        "num_classes": str(model.num_classes),
    }


def _describe(meta: dict[str, str]) -> str:
    if "arch" not in meta:
        return "a model of unknown architecture"
    return f"'{meta['arch']}' ({meta.get('image_shape', '?')} images, {meta.get('num_classes', '?')} classes)"


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model weights not found: {path}; check the path (a run directory holds model.safetensors)")
    return path


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip or pickle) or ``"other"``, from the first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: u64 little-endian JSON header length (at most 100 MB), then the header's "{"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= 100_000_000:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save zip, or a pickle (protocol ≥ 2)
        return "torch"
    return "other"


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle has keys(), no __iter__)
    except Exception as err:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"{path} is not a readable safetensors file ({_reason(err)}); it is truncated or corrupt") from None
    return state, meta


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or reading
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or failed: never retried without weights_only
        raise CheckpointError(f"{path} is a pickle that torch.load(weights_only=True) refuses ({type(err).__name__}); {_CONVERT}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; {_CONVERT}")
    return obj


def _check_keys(model: nn.Module, state: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{len(names)} {what} (e.g. {', '.join(names[:2])})"
        for what, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if names
    ]
    if problems:
        mine = _describe(_model_meta(model)) if isinstance(model, Classifier) and model.arch else type(model).__name__
        raise CheckpointError(f"{path} ({_describe(meta)}) does not fit {mine}: {'; '.join(problems)}")
