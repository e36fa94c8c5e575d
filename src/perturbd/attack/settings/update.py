"""The paper's second setting: poisoning during model updating (``attack.setting: update``).

A clean model, the victim's clean model (trained on the partition's ``initial`` images) or the
weights of ``attack.checkpoint`` (read once, never written), is fine-tuned on the *update batch*
(the partition's ``update``: ``attack.update_size`` images of new data the initial model never
saw) for ``attack.update_epochs`` at ``attack.update_lr``. The backdoored model is fine-tuned on
the batch with the poison in it (the injection rate is relative to the batch); the clean twin is
fine-tuned on the same batch without poison, with the same seed.
"""

from __future__ import annotations

import copy

from perturbd.attack import Partition
from perturbd.attack.settings.base import Context, Trained, register_setting
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit
from perturbd.metrics import attack_success_rate, clean_accuracy
from perturbd.poisoning import poison_dataset, sources_of
from perturbd.runs.results import BeforeUpdate, UpdateFacts
from perturbd.runs.twins import TwinStore
from perturbd.train import fit


@register_setting("update")
class Update:
    """Fine-tune a clean model on an update batch, with (backdoored) and without (twin) poison."""

    def check(self, cfg: ExperimentConfig, split: DataSplit, part: Partition, twins: TwinStore) -> None:
        """The checkpoint, if any, exists and is this architecture's (the partition checked the
        batch and the poison): it is read now, once, into ``twins``."""
        if cfg.attack.checkpoint is not None:
            twins.checkpoint(cfg, split.train.image_shape, split.train.num_classes)

    def train(self, ctx: Context) -> Trained:
        cfg, a, train = ctx.cfg, ctx.cfg.attack, ctx.split.train
        seconds: dict[str, float] = {}
        sha256 = None
        if a.checkpoint is not None:
            pretrained = ctx.twins.checkpoint(cfg, train.image_shape, train.num_classes)
            pre, origin, sha256 = pretrained.model.to(ctx.device), f"checkpoint {a.checkpoint}", pretrained.sha256
        else:
            twin = ctx.twins.clean_model(cfg, ctx.part.take(train, ctx.part.initial), ctx.device, description="initial")
            pre, origin, seconds["train_initial"] = twin.model, f"trained on {len(ctx.part.initial)} images", twin.seconds
        ctx.log(f"pre-update model: {origin}")
        batch = ctx.part.take(train, ctx.part.poisoned_set)
        poisoned = poison_dataset(batch, ctx.plan.trigger, cfg.poison, cfg.seed, ctx.part.poison)
        ctx.log(
            f"update batch {len(batch)} images, {len(poisoned.indices)} poisoned (rate {poisoned.injection_rate:.4f}) "
            f"→ label {cfg.poison.target}"
        )
        clean, backdoored = copy.deepcopy(pre), copy.deepcopy(pre)
        twin_fit = fit(
            clean,
            batch,
            cfg.train,
            cfg.seed,
            epochs=a.update_epochs,
            lr=a.update_lr,
            monitor=ctx.monitor,
            description="clean update",
            lr_name="attack.update_lr",
        )
        bad = fit(
            backdoored,
            poisoned.dataset,
            cfg.train,
            cfg.seed,
            epochs=a.update_epochs,
            lr=a.update_lr,
            monitor=ctx.monitor,
            description="poisoned update",
            lr_name="attack.update_lr",
        )
        seconds.update(update_clean=twin_fit.seconds, update_backdoored=bad.seconds)
        test, target, precision = ctx.split.test, cfg.poison.target, cfg.train.precision
        asr = attack_success_rate(pre, test, ctx.plan.trigger, target, sources_of(cfg.poison), precision)
        facts = {
            "before_update": BeforeUpdate(clean_accuracy=clean_accuracy(pre, test, precision), attack_success_rate=asr),
            "update": UpdateFacts(
                batch_size=len(batch),
                batch="seeded stratified slice of the victim's data, not used for the initial training",
                initial_train_size=None if a.checkpoint is not None else len(ctx.part.initial),
                epochs=a.update_epochs,
                lr=a.update_lr,
                pre_update_model=origin,
                checkpoint_sha256=sha256,
            ),
        }
        return Trained(clean, backdoored, poisoned, before=pre, facts=facts, seconds=seconds)
