"""Fine-tuning only dents an obvious patch backdoor (plain fine-tuning's known weakness); ``tune``
is the project's one training loop with the mitigations' fixed settings."""

from __future__ import annotations

import copy
import math

import torch

from perturbd.defenses import build_defense
from perturbd.defenses.fine_tuning import tune


def test_dents_the_planted_backdoor(mitigates) -> None:
    mitigates("fine_tuning", {"n_clean": 500, "lr": 0.1, "epochs": 10}, 0.88)


def test_losses_per_epoch_and_threads_left_alone(planted) -> None:
    threads = torch.get_num_threads()
    d = build_defense("fine_tuning", n_clean=128, epochs=3, batch_size=32).fit(planted.model, planted.clean)
    assert len(d.losses_) == 3 and all(math.isfinite(v) for v in d.losses_)
    assert torch.get_num_threads() == threads
    assert not d.model_.training


def test_tune_is_seeded(planted) -> None:
    def tuned(seed: int) -> torch.Tensor:
        net = copy.deepcopy(planted.model)
        tune(net, planted.clean.subset(torch.arange(128)), epochs=1, lr=0.05, batch_size=32, seed=seed)
        return net.fc.weight.detach().clone()

    assert torch.equal(tuned(0), tuned(0))
    assert not torch.equal(tuned(0), tuned(1))
