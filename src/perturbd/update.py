"""The paper's second setting: poisoning during model updating (``attack.setting: update``).

A clean model, trained on the victim's data or loaded from ``attack.checkpoint`` (read only, never
written), is fine-tuned on an *update batch* of ``attack.update_size`` images for
``attack.update_epochs`` at ``attack.update_lr``. The backdoored model is fine-tuned on the batch
with the poison in it (the injection rate is relative to the batch); the clean twin is fine-tuned
on the same batch without poison, with the same seed.

The update batch is *new data*, as in the paper: a seeded stratified ``update_size`` of the
victim's pool (the training split less any adversary auxiliary data) that the initial clean model
is not trained on (:func:`split_update`). With a checkpoint the batch is drawn the same way and the
initial split is not used.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit, ImageDataset
from perturbd.data.sources import stratified_indices
from perturbd.errors import CheckpointError, ConfigError
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.poison import choose_indices, poison_dataset
from perturbd.settings import Context, Trained, new_model, register_check, register_setting
from perturbd.train import fit

MIN_INITIAL_PER_CLASS = 5  # images per class the initial training must keep, at least


def split_update(pool: ImageDataset, cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into ``pool``: (initial training set, update batch); disjoint, sorted, seeded."""
    from perturbd.knowledge import derived_generator

    size, n = cfg.attack.update_size, len(pool)
    need = 0 if cfg.attack.checkpoint is not None else MIN_INITIAL_PER_CLASS * pool.num_classes
    if size > n - need:
        fix = "lower attack.update_size" + ("" if need == 0 else " or start from attack.checkpoint")
        raise ConfigError(
            f"attack.update_size {size} leaves {n - size} of the victim's {n} images for its initial "
            f"training (need at least {need}); {fix}"
        )
    batch = stratified_indices(pool.labels, size, derived_generator(cfg.seed, "update"), pool.num_classes)
    keep = torch.ones(n, dtype=torch.bool)
    keep[batch] = False
    return torch.nonzero(keep).flatten(), batch


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(cfg: ExperimentConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The victim architecture with the weights of ``attack.checkpoint`` (the file is only read).

    Raises:
        CheckpointError: missing file, or weights of another architecture or shape.
    """
    from perturbd.models import get_model, load_model_weights

    path = Path(cfg.attack.checkpoint).expanduser()  # type: ignore[arg-type]
    if not path.is_file():
        raise CheckpointError(f"attack.checkpoint not found: {path}; give a .safetensors file written by perturbd")
    model = get_model(cfg.model.name, image_shape, num_classes)
    load_model_weights(model, path)
    return model.eval()


@register_check("update")
def check_update(cfg: ExperimentConfig, split: DataSplit) -> None:
    """Before any work: the update batch fits the victim's data, the poison fits the batch, and
    the checkpoint (if any) is this architecture's."""
    from perturbd.knowledge import victim_train

    pool = victim_train(cfg, split)
    _, batch = split_update(pool, cfg)
    choose_indices(pool.labels[batch], cfg.poison, cfg.seed)
    if cfg.attack.checkpoint is not None:
        load_checkpoint(cfg, pool.image_shape, pool.num_classes)


@register_setting("update")
def update(ctx: Context) -> Trained:
    """Fine-tune a clean model on an update batch, with (backdoored) and without (twin) poison."""
    cfg, a = ctx.cfg, ctx.cfg.attack
    pool = ctx.plan.victim_train
    initial_idx, batch_idx = split_update(pool, cfg)
    batch = pool.subset(batch_idx)
    seconds: dict[str, float] = {}
    if a.checkpoint is not None:
        pre = load_checkpoint(cfg, pool.image_shape, pool.num_classes).to(ctx.device)
        origin = f"checkpoint {a.checkpoint}"
    elif ctx.plan.clean_model is not None:
        pre, origin = ctx.plan.clean_model, "the adversary's model (knowledge full: the same training)"
    else:
        pre = new_model(ctx)
        res = fit(pre, pool.subset(initial_idx), cfg.train, cfg.seed, monitor=ctx.monitor, description="initial")
        seconds["train_initial"], origin = res.seconds, f"trained on {len(initial_idx)} images"
    ctx.log(f"pre-update model: {origin}")
    poisoned = poison_dataset(batch, ctx.plan.trigger, cfg.poison, cfg.seed)
    ctx.log(f"update batch {len(batch)} images, {len(poisoned.indices)} poisoned (rate {poisoned.injection_rate:.4f}) → label {cfg.poison.target}")
    clean, backdoored = copy.deepcopy(pre), copy.deepcopy(pre)
    twin = fit(clean, batch, cfg.train, cfg.seed, epochs=a.update_epochs, lr=a.update_lr, monitor=ctx.monitor, description="clean update")
    bad = fit(backdoored, poisoned.dataset, cfg.train, cfg.seed, epochs=a.update_epochs, lr=a.update_lr, monitor=ctx.monitor, description="poisoned update")
    seconds.update(update_clean=twin.seconds, update_backdoored=bad.seconds)
    test, target = ctx.split.test, cfg.poison.target
    metrics = {
        "before_update": {
            "clean_accuracy": clean_accuracy(pre, test),
            "attack_success_rate": attack_success_rate(pre, test, ctx.plan.trigger, target),
        },
        "update": {
            "batch_size": len(batch),
            "batch": "seeded stratified slice of the victim's data, not used for the initial training",
            "initial_train_size": None if a.checkpoint is not None else len(initial_idx),
            "epochs": a.update_epochs,
            "lr": a.update_lr,
            "pre_update_model": origin,
            "checkpoint_sha256": file_sha256(Path(a.checkpoint).expanduser()) if a.checkpoint is not None else None,
        },
    }
    return Trained(clean, backdoored, poisoned, metrics=metrics, seconds=seconds)
