"""Defence inputs for a saved model: a run directory, a model file of perturbd's, or any other.

A run directory (:class:`~perturbd.runs.folder.RunDir`) gives everything: its model (under test),
its clean model (the clean twin, for baselines), its trigger, and from its config the data, the
target and the seed. The poisoned training set is rebuilt from the config: the run's partition
(:func:`perturbd.attack.partition.partition`, seeded) gives the victim's images and the poison's
positions among them, used only if those equal the saved poison record (a run of the
update setting, whose poison is in the update batch, then has no dataset screening here: run the
defence from the experiment config instead). With the rebuilt set come the victim's initial
weights (its model section, seeded by the run seed) and its recipe, for a training-time defence.

A bare model file needs ``data``; ``trigger`` and ``target`` are optional (without them, STRIP and
the ASR of mitigations cannot be measured). Its training split is taken as the defender's data:
all of it may be screened, and its images are the clean set. The file is a perturbd checkpoint
(it records its architecture), a TorchScript file (it is its architecture), or a state dict
(``.safetensors``/``.pt``/``.pth``) whose architecture ``model`` names (``{"name": "tv:resnet18"}``:
``--arch``); ``model`` also sets the other keys of the config's model section (``features``,
``input_range``, ``mean``, ``std``), over a run's own (:func:`model_spec`).

A run folder, or a checkpoint's metadata, that names code to run (``factory:``, ``torchscript:``) is
refused in one line before anything is loaded, unless ``trust_code`` (``--trust-code``) or the
user names the architecture (``model["name"]``, ``--arch``): see :mod:`perturbd.trust`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perturbd.attack.partition import partition
from perturbd.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig, validate
from perturbd.data import ImageDataset, load_data
from perturbd.errors import CheckpointError, ConfigError
from perturbd.evaluation.inputs import DefenseInputs, defender_clean_set
from perturbd.limits import check_seed
from perturbd.models import Classifier, build_model, checkpoint_metadata, is_checkpoint
from perturbd.models.checkpoint import is_torchscript, read_weights
from perturbd.poisoning import poison_dataset, sources_of
from perturbd.runs.folder import RunDir
from perturbd.triggers import Trigger
from perturbd.trust import USER_CODE, check_code

CLEAN_SOURCE = (
    "training split minus the poisoned images and the other images the attacker changed (wanet's noise mode), "
    "seeded random order (disjoint from the test split)"
)


@dataclass(frozen=True)
class SavedRun:
    """Paths and config of a saved model (``config`` is ``None`` for a bare model file);
    ``trust_code``: the architecture its files name may be code (:mod:`perturbd.trust`)."""

    model: Path
    config: ExperimentConfig | None = None
    folder: Path | None = None
    trust_code: bool = False


def locate(path: Path, *, trust_code: bool = False, model: dict[str, Any] | None = None) -> SavedRun:
    """A run directory (holding its model) or a model file; a CheckpointError if neither. A run
    whose config names code to run is refused (a one-line ConfigError) unless ``trust_code``, or
    ``model`` (the keys of the model section the user gives: ``--arch``, :func:`model_spec`) names
    the architecture."""
    path = Path(path).expanduser()
    if path.name == RunDir.MODEL and RunDir(path.parent).has(RunDir.CONFIG):
        path = path.parent  # a run directory's model: use the whole run
    if path.is_dir():
        run = RunDir(path)
        if not run.has(RunDir.MODEL):
            if run.is_run():
                raise CheckpointError(
                    f"{path} is a run kept without its weights; "
                    f"`perturbd reproduce {path} --restore` trains it again and puts them back if it reproduces"
                )
            raise CheckpointError(f"{path} is a folder without {RunDir.MODEL}; give a run directory or a model file")
        run.check_format()
        cfg = run.stored_config(trust_code=True) if run.has(RunDir.CONFIG) else None  # checked here: model may name the architecture
        if cfg is not None and not trust_code:
            check_code(cfg, run.config_path, mine=["model.name"] if "name" in (model or {}) else [], arch_option=model is not None)
        return SavedRun(run.model_path, cfg, path, trust_code)
    if not path.is_file():
        raise CheckpointError(f"model not found: {path}; give a run directory or a model file (.safetensors, .pt, .pth)")
    return SavedRun(path, trust_code=trust_code)


def load_trigger(run: RunDir) -> Trigger | None:
    """The trigger of the run in ``run`` (``None`` if it kept none): the typed reader of its trigger
    file, here rather than on :class:`RunDir` because it needs torch."""
    return Trigger.load(run.trigger_path) if run.has(RunDir.TRIGGER) else None


def model_spec(saved: SavedRun, model: dict[str, Any] | None = None) -> ModelConfig:
    """The model section that builds ``saved.model``: a run's own (its weights are that file), the
    file's record (a perturbd checkpoint), the file itself (TorchScript), or ``model["name"]``
    (a state dict); ``model``'s keys override."""
    over, path = dict(model or {}), saved.model
    if saved.config is not None:
        base = {**saved.config.model.model_dump(mode="json"), "weights": None, "replace_head": False}
    elif is_torchscript(path):
        if "name" in over:
            raise ConfigError(f"{path} is a TorchScript file: it holds its own architecture; drop --arch {over['name']}")
        base = {"name": f"torchscript:{path}"}
    elif "name" in over:
        base = {"weights": str(path)}
    else:
        read_weights(path)  # a corrupt or unsafe file says so first
        arch = checkpoint_metadata(path).get("arch", "") if is_checkpoint(path) else ""
        if not arch:
            raise CheckpointError(
                f"{path} holds weights without their architecture; name the architecture with --arch tv:NAME or "
                "--arch factory:package.module:function"
            )
        if arch.partition(":")[0] in USER_CODE and not saved.trust_code:
            raise CheckpointError(
                f"{path} holds a model of '{arch}', code its metadata names; perturbd runs no code a file names unless told: "
                f"--trust-code if you trust who wrote it, or --arch {arch} to name it yourself"
            )
        base = {"name": arch, "weights": str(path)}
    config: ModelConfig = validate({**base, **over}, ModelConfig)
    return config


def load_model(saved: SavedRun, data: ImageDataset, model: dict[str, Any] | None = None) -> Classifier:
    """``saved.model`` built for ``data`` (:func:`model_spec`), in eval mode; torch's global RNG is
    left as it was."""
    spec = model_spec(saved, model)
    if saved.config is None and is_checkpoint(saved.model) and "name" not in (model or {}):
        meta = checkpoint_metadata(saved.model)
        shape = "x".join(str(s) for s in data.image_shape)
        if meta.get("image_shape") != shape or meta.get("num_classes") != str(data.num_classes):
            raise ConfigError(
                f"{saved.model} takes {meta.get('num_classes')} classes of shape {meta.get('image_shape')} but data "
                f"'{data.name}' has {data.num_classes} of shape {shape}; pass the data it was trained on"
            )
    return build_saved(saved, data.image_shape, data.num_classes, model, spec)


def build_saved(
    saved: SavedRun, image_shape: Sequence[int], num_classes: int, model: dict[str, Any] | None = None, spec: ModelConfig | None = None
) -> Classifier:
    """``saved.model`` built for images of ``image_shape`` and ``num_classes`` classes without a
    data set (``perturbd scan`` of a data-free detector), in eval mode; torch's global RNG is left
    as it was. :func:`load_model` checks a checkpoint's record against the data first."""
    spec = spec or model_spec(saved, model)
    with torch.random.fork_rng(devices=[]):
        return build_model(spec, tuple(image_shape), num_classes, weights=saved.model if saved.config is not None else None).eval()


def recorded_shape(saved: SavedRun) -> tuple[tuple[int, int, int], int] | None:
    """``(image_shape, num_classes)`` a perturbd checkpoint (a run's model file, or a bare one)
    records, None for any other file or a malformed record."""
    if not is_checkpoint(saved.model):
        return None
    meta = checkpoint_metadata(saved.model)
    try:
        c, h, w = (int(s) for s in meta.get("image_shape", "").split("x"))
        return (c, h, w), int(meta.get("num_classes", ""))
    except ValueError:
        return None


def _data_config(saved: SavedRun, data: str | None, data_root: Path | None) -> DataConfig:
    base = saved.config.data if saved.config is not None else None
    if base is None and data is None:
        raise ConfigError(
            f"{saved.model} comes with no run config; say which data it was trained on with --data NAME (or pass its run directory)"
        )
    fields = (base.model_dump() if base is not None else {}) | ({"name": data} if data else {}) | ({"root": data_root} if data_root else {})
    return DataConfig(**fields)


def load_inputs(
    path: Path,
    *,
    data: str | None = None,
    data_root: Path | None = None,
    trigger: Path | None = None,
    target: int | None = None,
    seed: int | None = None,
    model: dict[str, Any] | None = None,
    trust_code: bool = False,
    sources: Sequence[int] | None = None,
) -> DefenseInputs:
    """Everything :func:`~perturbd.evaluation.harness.run_defenses` needs for a saved model
    (``model``: keys of the config's model section, see :func:`model_spec`; ``trust_code``: a
    run or checkpoint naming code to run is built, see :func:`locate`). ``sources``: the source
    classes of a source-specific attack (default: a run's ``poison.sources``; none for a bare
    model: every class but the target), which every ASR a defence reports counts."""
    if seed is not None:
        check_seed(seed)
    saved = locate(path, trust_code=trust_code, model=model)
    cfg = saved.config
    seed = seed if seed is not None else (cfg.seed if cfg is not None else 0)
    split = load_data(_data_config(saved, data, data_root), seed)
    net = load_model(saved, split.train, model)
    folder = RunDir(saved.folder) if saved.folder is not None else None
    trig = Trigger.load(trigger) if trigger is not None else (load_trigger(folder) if folder is not None else None)
    if target is None and cfg is not None:
        target = cfg.poison.target
    if target is not None and not 0 <= target < split.train.num_classes:
        raise ConfigError(f"--target must be in [0, {split.train.num_classes - 1}], got {target}")
    if sources is None and cfg is not None:
        sources = sources_of(cfg.poison)
    if sources is not None:
        _check_sources(list(sources), target, split.train.num_classes)
    clean_model = None
    if folder is not None and folder.has(RunDir.CLEAN_MODEL):
        clean_model = load_model(SavedRun(folder.clean_model_path, cfg, folder.path, trust_code), split.train, model)
    train: ImageDataset | None = split.train
    indices: torch.Tensor | None = None
    touched: torch.Tensor | None = None
    initial: Callable[[], nn.Module] | None = None
    recipe: TrainConfig | None = None
    if folder is not None and cfg is not None and trig is not None and folder.has(RunDir.POISON_INDICES):
        saved_idx = torch.tensor(folder.poison_indices().indices, dtype=torch.long)
        train = None
        if cfg.attack.setting == "before_training":
            part = partition(cfg, split.train.labels, split.train.num_classes)
            if torch.equal(part.poison, saved_idx):
                victim = part.take(split.train, part.victim)
                rebuilt = poison_dataset(victim, trig, cfg.poison, cfg.seed, part.poison)
                train, indices, touched = rebuilt.dataset, saved_idx, rebuilt.noise_indices
                initial, recipe = _initial_model(cfg, model, split.train.image_shape, split.train.num_classes), cfg.train
    clean = defender_clean_set(train if train is not None else split.train, indices, seed, touched)
    chosen = None if sources is None else tuple(sources)
    return DefenseInputs(
        net, split.test, clean, CLEAN_SOURCE, train, indices, trig, target, clean_model, seed=seed, sources=chosen,
        initial_model=initial, train_config=recipe,
    )  # fmt: skip


def _initial_model(
    cfg: ExperimentConfig, model: dict[str, Any] | None, image_shape: tuple[int, ...], num_classes: int
) -> Callable[[], nn.Module]:
    """A function building the run's victim with its initial weights (its config's model section,
    the keys of ``model`` over it, seeded by the run seed, as the run built it), for a
    training-time defence."""
    spec: ModelConfig = validate({**cfg.model.model_dump(mode="json"), **(model or {})}, ModelConfig)
    return lambda: build_model(spec, image_shape, num_classes, seed=cfg.seed)


def _check_sources(sources: list[int], target: int | None, num_classes: int) -> None:
    """One line when ``sources`` (``--source``) names a label the data lacks, or only the target."""
    bad = [s for s in sources if not 0 <= s < num_classes]
    if bad:
        raise ConfigError(f"--source must be labels in [0, {num_classes - 1}], got {bad}")
    if not [s for s in sources if s != target]:
        raise ConfigError(f"--source {sources} has no class other than the target {target}; give a source class that is not the target")
