"""Neural Cleanse flags the planted target, not a clean model; batched == label-by-label, with
labels stopping early at different epochs; the cost stays 0 until the attack succeeds."""

from __future__ import annotations

import torch
from torch import nn

from perturbd.defenses import build_defense
from perturbd.defenses.neural_cleanse import NeuralCleanse, anomaly_index, epoch_steps, flow, initial_trigger, reverse_triggers
from perturbd.evaluation.harness import evaluate_defense, write_defenses

# 30 epochs of 10 mini-batches of 8 (the schedule sets the cost after 5 epochs and moves it every
# 5). Seeds (derived from 0), 1, 2, 3: the target's index 3.7, 2.9, 6.0, 3.0, the largest of the
# backdoored model's; the clean twin's largest 1.7, 1.8, 1.4, 2.2. Label 8 has a small mask on
# both models of these bars: it is flagged beside the target with seed 2 and on the clean twin
# with seed 3 (so neither "only the target" nor "nothing on the clean twin" is asserted).
FAST = {"epochs": 30, "batch_size": 8, "n_clean": 80}


def test_anomaly_index_is_signed_mad() -> None:
    idx = anomaly_index(torch.tensor([10.0, 10, 11, 9, 10, 2]))
    assert float(idx[-1]) > 2 and all(float(v) < 2 for v in idx[:-1])
    assert float(idx[2]) < 0, "larger than the median is the negative side"


def test_flags_target_of_backdoored_model_only(planted, tmp_path) -> None:
    r = evaluate_defense(build_defense("neural_cleanse", **FAST), planted.inputs())
    assert r.metrics["target_flagged"], r.metrics
    index = r.metrics["anomaly_index"]
    assert max(index) == index[0] == r.metrics["target_anomaly_index"]
    assert 0 not in r.metrics["clean_model"]["flagged_labels"]
    assert max(r.metrics["clean_model"]["anomaly_index"]) < r.metrics["target_anomaly_index"]
    write_defenses(tmp_path, [r], "test")
    assert (tmp_path / "neural_cleanse_trigger.png").stat().st_size > 0
    assert (tmp_path / "defenses.json").is_file()


def test_batched_equals_label_by_label(planted) -> None:
    # patience 1 and early-stop patience 2: every label stops early, at epochs 9 to 13
    small = {"epochs": 40, "batch_size": 8, "n_clean": 32, "patience": 1, "early_stop_patience": 2, "seed": 0}
    batched = build_defense("neural_cleanse", mode="batched", **small).fit(planted.model, planted.clean)
    loop = build_defense("neural_cleanse", mode="loop", **small).fit(planted.model, planted.clean)
    assert bool(batched.stopped_.all()) and len(set(batched.epochs_.tolist())) > 1, batched.evidence_
    assert bool((batched.epochs_ < 40).all())
    assert batched.flagged_labels_ == loop.flagged_labels_
    assert torch.equal(batched.reached_, loop.reached_)
    assert torch.equal(batched.epochs_, loop.epochs_) and torch.equal(batched.stopped_, loop.stopped_)
    assert torch.allclose(batched.masks_, loop.masks_, atol=1e-3)
    assert torch.allclose(batched.norms_, loop.norms_, rtol=1e-3)


def test_evidence_and_figures_are_per_label(planted, tmp_path) -> None:
    d = build_defense("neural_cleanse", epochs=2, batch_size=4, n_clean=40).fit(planted.model, planted.clean)
    k = planted.train.num_classes
    assert set(d.evidence_) == {"mask_l1", "reached", "epochs", "stopped_early"}
    assert all(len(v) == k for v in d.evidence_.values())
    assert d.evidence_["mask_l1"] == [round(float(v), 3) for v in d.norms_]
    assert d.evidence_["epochs"] == [2] * k and d.evidence_["stopped_early"] == [False] * k
    figures = d.figures()
    assert sorted(figures) == ["neural_cleanse_norms.png", "neural_cleanse_trigger.png"]
    for name, draw in figures.items():
        draw(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0


def test_defaults_are_the_reference_example() -> None:
    d = NeuralCleanse()
    assert (d.epochs, d.epoch_images, d.batch_size, d.n_clean, d.lr, d.init_cost) == (1000, 1000, 32, None, 0.1, 1e-3)
    assert (d.cost_multiplier, d.patience, d.attack_threshold) == (2.0, 5, 0.99)
    assert (d.early_stop, d.early_stop_threshold, d.early_stop_patience, d.anomaly_threshold) == (True, 1.0, 25, 2.0)


class AlwaysTarget(nn.Module):
    """Predicts label 0 whatever the input: the attack always succeeds, and the cross-entropy
    has no gradient, so only the cost term moves the mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([5.0, 0.0]) + 0.0 * x.mean((1, 2, 3))[:, None]


def _reverse(epochs: int) -> dict[str, torch.Tensor]:
    kw = dict(batch_size=4, lr=0.1, init_cost=1e-3, cost_multiplier=2.0, patience=5, attack_threshold=0.99)
    es = dict(early_stop=True, early_stop_threshold=1.0, early_stop_patience=25)
    return reverse_triggers(AlwaysTarget(), torch.zeros(8, 1, 6, 6, dtype=torch.uint8), [0], epochs=epochs, seed=3, **kw, **es)


def test_cost_stays_zero_until_patience_epochs_succeed() -> None:
    mask0, _ = initial_trigger((1, 6, 6), 0, 3)
    for epochs in (4, 5):  # the cost becomes init_cost at the end of epoch 5: no pull on the mask yet
        out = _reverse(epochs)
        assert torch.allclose(out["masks"][0], mask0[0], atol=1e-5), epochs
        assert out["reached"].tolist() == [True] and out["epochs"].tolist() == [epochs]
    assert float(_reverse(6)["norms"][0]) < float(mask0.sum()) - 0.5, "from epoch 6 on the L1 cost shrinks the mask"


def test_mini_batches_come_from_the_whole_pool(planted) -> None:
    """An epoch is 1000 // 32 = 31 mini-batches (the reference's NB_SAMPLE / BATCH_SIZE), drawn from
    every clean image given, not from the first 1,000: the next epoch goes on through the pool."""
    gen = torch.Generator().manual_seed(0)
    batches = flow(2000, 32, gen)
    seen = torch.cat([next(batches) for _ in range(2 * 31)])
    assert len(set(seen.tolist())) == len(seen) == 1984, "two epochs of 31 batches: one pass over 2,000, nothing twice"
    assert epoch_steps(2000, 32, 1000) == 31 and epoch_steps(500, 32, 1000) == 15 and epoch_steps(10, 32, None) == 1
    d = build_defense("neural_cleanse", epochs=1, batch_size=8, epoch_images=16)
    r = evaluate_defense(d, planted.inputs())
    assert r.clean_used == len(planted.clean) and r.metrics["clean_pool"] == len(planted.clean), "all the clean images by default"
    assert r.metrics["batches_per_epoch"] == 2 and r.metrics["clean_model"]["clean_pool"] == len(planted.clean)


def test_a_pool_of_one_epoch_is_drawn_as_before(planted) -> None:
    """A pool no larger than an epoch: one fresh seeded permutation per epoch, as before the pool was whole."""
    gen = torch.Generator().manual_seed(3)
    batches = flow(80, 8, gen)
    again = torch.Generator().manual_seed(3)
    for _ in range(3):
        order = torch.randperm(80, generator=again)
        assert torch.equal(torch.cat([next(batches) for _ in range(10)]), order)
