"""Scoring a trial: the exact objective of its pooled validation probabilities (one val split, or the
out-of-fold predictions of every fold it trained), with its interval, threshold and tie-break."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.config import ObjectiveConfig
from nas.objective import objective_interval, precision_at_recall, tie_break_value


@dataclass(frozen=True)
class Score:
    objective: float
    objective_ci95: tuple[float, float]
    recall: float
    threshold: float
    reason: str
    note: str
    tie_break: float
    pr_auc: float


def score(y: np.ndarray, prob: np.ndarray, objective: ObjectiveConfig, *, seed: int, params: int,
          latency_ms: float, groups: np.ndarray | None = None, interval: bool = True) -> Score:
    """The trial's figures on the validation frames: objective, 95% interval, operating point, tie-break.
    With groups (sessions) the recall bound and the interval are those of new sessions."""
    floor, sure = objective.recall_floor, objective.recall_confidence
    op = precision_at_recall(y, prob, floor, sure, groups=groups)
    low, high = (objective_interval(y, prob, floor, seed=seed, confidence=sure, groups=groups, threshold=op.threshold)
                 if interval else (op.precision, op.precision))
    return Score(op.precision, (low, high), op.recall, op.threshold, op.reason, op.note,
                 tie_break_value(objective.tie_break, y, prob, params=params, latency_ms=latency_ms),
                 tie_break_value("pr_auc", y, prob))
