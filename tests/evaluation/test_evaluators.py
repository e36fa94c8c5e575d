"""An input screen's cell shows its clean-model baseline beside its score (issue 40: STRIP)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn as nn

from perturbd.data.dataset import ImageDataset, to_float01
from perturbd.defenses.base import Defense, DefenseParams
from perturbd.evaluation import evaluate_defense
from perturbd.evaluation.detection import detection_text


class TargetScore(Defense):
    """An input screen that scores an image by the model's probability of label 0 (the target):
    on the backdoored model a triggered image scores high, on the clean twin it does not."""

    name: ClassVar[str] = "target_score"
    kind: ClassVar[str] = "input"
    frr = 0.01

    class Params(DefenseParams):
        seed: int | None = None

    def fit(self, model: nn.Module, data: ImageDataset) -> TargetScore:
        self.model = model.eval()
        self.scores_ = self.score(data.images[:200])
        self.threshold_ = float(torch.quantile(self.scores_, 1 - self.frr))
        self.flagged_ = self.flag_scores(self.scores_)
        self.clean_used_ = min(len(data), 200)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_float01(images)).softmax(1)[:, 0]

    def flag(self, images: torch.Tensor) -> torch.Tensor:
        return self.flag_scores(self.score(images))

    def flag_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold_


def test_the_clean_model_baseline_is_beside_the_score(planted) -> None:
    r = evaluate_defense(TargetScore(), planted.inputs(), eval_limit=200)
    m = r.metrics
    assert m["auroc"] > 0.9 and m["clean_model"]["auroc"] < m["auroc"], "the backdoor, not the trigger, separates them"
    assert r.cell["text"] == f"{detection_text(m)}; clean model AUROC {m['clean_model']['auroc']:.3f}"
    without = evaluate_defense(TargetScore(), dataclasses.replace(planted.inputs(), clean_model=None), eval_limit=200)
    assert "clean_model" not in without.metrics and without.cell["text"] == detection_text(without.metrics)
