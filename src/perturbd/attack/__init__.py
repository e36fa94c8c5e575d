"""The attack: who holds which images (:mod:`.partition`), what the adversary knows and trains
(:mod:`.adversary`), the trigger it builds (:mod:`.plan`), and ``perturbd trigger make``
(:mod:`.trigger_file`)."""

from perturbd.attack.adversary import Adversary, prepare_adversary
from perturbd.attack.partition import Partition, indices_hash, partition
from perturbd.attack.plan import AttackPlan, adaptive_mask, plan_attack

__all__ = ["Adversary", "AttackPlan", "Partition", "adaptive_mask", "indices_hash", "partition", "plan_attack", "prepare_adversary"]
