"""Neural Cleanse's epoch-level cost schedule, best rule and early stop, driven by given epoch
means (the reference's ``Visualizer.visualize`` loop, bolunwang/backdoor @ e8577747)."""

from __future__ import annotations

import pytest
import torch

from perturbd.defenses.nc_schedule import CostSchedule

INIT = 1e-3


def schedule(k: int = 1, **kw) -> CostSchedule:
    return CostSchedule(k, init_cost=INIT, multiplier=2.0, patience=5, threshold=0.99, **kw)


def run(s: CostSchedule, accs: list[float], reg: float = 10.0) -> list[float]:
    """Feed one label's epoch accuracies (constant L1); the cost after each epoch."""
    costs = []
    for a in accs:
        s.step(torch.tensor([0]), torch.tensor([a]), torch.tensor([reg]))
        costs.append(float(s.cost[0]))
    return costs


def test_cost_starts_at_zero_and_is_set_after_patience_successes() -> None:
    s = schedule()
    costs = run(s, [1.0] * 4)
    assert costs == [0.0] * 4
    assert run(s, [1.0]) == [INIT]
    # the set epoch already counts one success: 4 more make 5 and double it
    assert run(s, [1.0] * 4) == [INIT] * 3 + [2 * INIT]
    assert s.up_flag.tolist() == [True] and s.down_flag.tolist() == [False]
    down = run(s, [0.5] * 5)
    assert down[:4] == [2 * INIT] * 4 and down[4] == pytest.approx(2 * INIT / 2**1.5)
    assert s.down_flag.tolist() == [True]


def test_a_failure_restarts_the_count_to_setting_the_cost() -> None:
    s = schedule()
    assert run(s, [1.0] * 4 + [0.5] + [1.0] * 4) == [0.0] * 9
    assert run(s, [1.0]) == [INIT]


def test_at_cost_zero_only_flags_move_and_setting_the_cost_clears_them() -> None:
    s = schedule()
    assert run(s, [0.5] * 5) == [0.0] * 5, "0 / 2**1.5 is still 0"
    assert s.down_flag.tolist() == [True]
    run(s, [1.0] * 5)
    assert float(s.cost[0]) == INIT and s.down_flag.tolist() == [False] and s.up_flag.tolist() == [False]


def test_best_is_kept_by_epoch_mean_and_threshold() -> None:
    s = schedule()
    rows = torch.tensor([0])
    improved, _ = s.step(rows, torch.tensor([0.98]), torch.tensor([5.0]))
    assert improved.tolist() == [False] and float(s.best_reg[0]) == float("inf")
    improved, _ = s.step(rows, torch.tensor([0.99]), torch.tensor([5.0]))
    assert improved.tolist() == [True] and float(s.best_reg[0]) == 5.0
    improved, _ = s.step(rows, torch.tensor([1.0]), torch.tensor([6.0]))
    assert improved.tolist() == [False] and float(s.best_reg[0]) == 5.0


def test_early_stop_needs_a_best_both_flags_and_patience() -> None:
    s = schedule(early_stop_patience=25)
    rows = torch.tensor([0])
    # 10 epochs of success (cost set, then doubled), 5 of failure (halved): both flags raised
    for acc in [1.0] * 10 + [0.5] * 5:
        _, stop = s.step(rows, torch.tensor([acc]), torch.tensor([3.0]))
        assert not bool(stop.any())
    assert s.up_flag.tolist() == [True] and s.down_flag.tolist() == [True]
    # the best (3.0) never improves again: the stall count grew since epoch 2 and reaches 25 at epoch 26
    epochs = 15
    while not bool(s.stopped[0]):
        s.step(rows, torch.tensor([1.0]), torch.tensor([3.0]))
        epochs += 1
    assert epochs == 26 and int(s.epochs[0]) == 26


def test_labels_keep_their_own_state_and_stopped_rows_are_left_alone() -> None:
    s = schedule(2)
    for _ in range(5):
        s.step(torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert s.cost.tolist() == [INIT, 0.0]
    s.step(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([1.0]))
    assert s.epochs.tolist() == [5, 6] and s.cost.tolist() == [INIT, 0.0]
