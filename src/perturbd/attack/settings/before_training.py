"""The paper's first setting: the poison is part of the training set of a model trained from scratch."""

from __future__ import annotations

from perturbd.attack import Partition
from perturbd.attack.settings.base import Context, Trained, register_setting
from perturbd.config import ExperimentConfig
from perturbd.data.dataset import DataSplit
from perturbd.models import build_model
from perturbd.poisoning import poison_dataset
from perturbd.runs.twins import TwinStore
from perturbd.train import fit


@register_setting("before_training")
class BeforeTraining:
    """The clean twin trains on the victim's data, the backdoored model on the same data with the
    poison; same architecture, seed and training."""

    def check(self, cfg: ExperimentConfig, split: DataSplit, part: Partition, twins: TwinStore) -> None:
        """Nothing beyond the partition's checks (the poison fits the victim's data)."""

    def train(self, ctx: Context) -> Trained:
        cfg, train = ctx.cfg, ctx.split.train
        victim = ctx.part.take(train, ctx.part.victim)
        poisoned = poison_dataset(victim, ctx.plan.trigger, cfg.poison, cfg.seed, ctx.part.poison)
        ctx.log(
            f"poisoned {len(poisoned.indices)} of {len(poisoned.dataset)} training images (rate {poisoned.injection_rate:.4f}) "
            f"→ label {cfg.poison.target}"
        )
        twin = ctx.twins.clean_model(cfg, victim, ctx.device)
        ctx.log(f"clean twin: {twin.source}")
        backdoored = build_model(cfg.model, train.image_shape, train.num_classes, seed=cfg.seed)
        bad = fit(backdoored, poisoned.dataset, cfg.train, cfg.seed, monitor=ctx.monitor, description="backdoored")
        ctx.log(f"trained backdoored model in {bad.seconds:.1f} s ({bad.images_per_s:.0f} img/s)")
        return Trained(twin.model, backdoored, poisoned, seconds={"train_clean": twin.seconds, "train_backdoored": bad.seconds})
