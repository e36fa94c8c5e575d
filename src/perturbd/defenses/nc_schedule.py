"""Neural Cleanse's cost schedule, best-result rule and early stop, for many labels at once.

A transcription of the epoch loop of ``Visualizer.visualize`` in the authors' code
(bolunwang/backdoor @ e8577747, ``visualizer.py``), with the parameters of its example
(``gtsrb_visualize_example.py``: patience 5, cost multiplier 2, attack threshold 0.99, early-stop
threshold 1.0 and patience 5 × 5 = 25). Every counter moves once per *epoch*, from the epoch's
mean attack accuracy ``acc`` and mean mask L1 ``reg`` (averaged over its mini-batches), in this
order:

1. **best**: if ``acc ≥ threshold`` and ``reg < best_reg``, the mask and pattern after the epoch
   are kept as the result and ``best_reg = reg``.
2. **early stop** (only once a best exists): ``best_reg ≥ early_stop_threshold × es_best``
   counts an epoch without progress (else the count restarts); ``es_best = min(es_best,
   best_reg)``; stop when the cost has gone both up and down and the count reached
   ``early_stop_patience``. A stopped label skips step 3 (the reference ``break``\\ s first).
3. **cost**: the cost starts at 0 (``reset_cost_to_zero``). While it is 0, ``patience``
   consecutive epochs with ``acc ≥ threshold`` set it to ``init_cost`` and reset the up/down
   counters and flags. Then, whatever the cost (the reference runs this part unconditionally, so
   at cost 0 it only raises flags), ``acc ≥ threshold`` counts up (and clears the down count),
   otherwise down; ``patience`` ups multiply the cost by ``multiplier`` (up flag), else
   ``patience`` downs divide it by ``multiplier ** 1.5`` (down flag); the count that fired restarts.

Each label has its own cost, counters, flags, best and early stop: :class:`CostSchedule` holds
them as ``(K,)`` tensors and :meth:`CostSchedule.step` updates the rows of the labels still running.
"""

from __future__ import annotations

import torch


class CostSchedule:
    """The per-label state of the schedule above (CPU tensors of length ``k``).

    Attributes:
        cost: float64, the weight of the mask L1 in each label's loss (starts at 0).
        best_reg: float64, the epoch-mean L1 of the kept result (``inf`` while none).
        epochs: epochs each label has run.
        stopped: labels that stopped early.
    """

    def __init__(
        self,
        k: int,
        *,
        init_cost: float,
        multiplier: float,
        patience: int,
        threshold: float,
        early_stop: bool = True,
        early_stop_threshold: float = 1.0,
        early_stop_patience: int = 25,
    ) -> None:
        self.init_cost, self.up, self.down = init_cost, multiplier, multiplier**1.5
        self.patience, self.threshold = patience, threshold
        self.early_stop, self.es_threshold, self.es_patience = early_stop, early_stop_threshold, early_stop_patience
        zeros = torch.zeros(k, dtype=torch.long)
        self.cost = torch.zeros(k, dtype=torch.float64)
        self.set_count, self.up_count, self.down_count, self.es_count, self.epochs = (zeros.clone() for _ in range(5))
        self.up_flag, self.down_flag, self.stopped = (torch.zeros(k, dtype=torch.bool) for _ in range(3))
        self.best_reg = torch.full((k,), float("inf"), dtype=torch.float64)
        self.es_best = self.best_reg.clone()

    def step(self, rows: torch.Tensor, acc: torch.Tensor, reg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """End of one epoch for the labels at ``rows`` (long ``(R,)``), with their epoch-mean
        attack accuracy ``acc`` and mask L1 ``reg`` (``(R,)``).

        Returns ``(improved, stop)``, bool ``(R,)``: whose state after this epoch becomes the
        result, and who stops now.
        """
        acc, reg = acc.double().cpu(), reg.double().cpu()
        self.epochs[rows] += 1
        ok = acc >= self.threshold
        best = self.best_reg[rows]
        improved = ok & (reg < best)
        best = torch.where(improved, reg, best)
        self.best_reg[rows] = best
        stop = torch.zeros(len(rows), dtype=torch.bool)
        if self.early_stop:
            found = torch.isfinite(best)
            es_best = self.es_best[rows]
            stalled = best >= self.es_threshold * es_best
            count = self.es_count[rows]
            self.es_count[rows] = torch.where(found, torch.where(stalled, count + 1, 0), count)
            self.es_best[rows] = torch.minimum(best, es_best)
            stop = self.up_flag[rows] & self.down_flag[rows] & (self.es_count[rows] >= self.es_patience)
            self.stopped[rows[stop]] = True
        go = rows[~stop]
        self._cost(go, ok[~stop])
        return improved, stop

    def _cost(self, rows: torch.Tensor, ok: torch.Tensor) -> None:
        """Step 3 of the module docstring for ``rows`` (labels that did not stop)."""
        cost = self.cost[rows]
        at_zero = (cost == 0) & ok
        set_count = torch.where(at_zero, self.set_count[rows] + 1, 0)
        start = at_zero & (set_count >= self.patience)
        cost = torch.where(start, torch.full_like(cost, self.init_cost), cost)
        up_count = torch.where(start, 0, self.up_count[rows])
        down_count = torch.where(start, 0, self.down_count[rows])
        up_flag = self.up_flag[rows] & ~start
        down_flag = self.down_flag[rows] & ~start
        up_count = torch.where(ok, up_count + 1, 0)
        down_count = torch.where(ok, 0, down_count + 1)
        raise_ = up_count >= self.patience
        lower = ~raise_ & (down_count >= self.patience)
        cost = torch.where(raise_, cost * self.up, torch.where(lower, cost / self.down, cost))
        self.cost[rows] = cost
        self.set_count[rows] = set_count
        self.up_count[rows] = torch.where(raise_, 0, up_count)
        self.down_count[rows] = torch.where(lower, 0, down_count)
        self.up_flag[rows] = up_flag | raise_
        self.down_flag[rows] = down_flag | lower
