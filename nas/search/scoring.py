"""Scoring a trial: the exact objective of its pooled validation probabilities (one val split, or the
out-of-fold predictions of every fold it trained), with its interval, threshold and tie-break."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.config import ObjectiveConfig
from nas.objective import (
    MIN_SESSIONS,
    expected_on_new_data,
    objective_interval,
    precision_at_recall,
    tie_break_value,
)


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
          latency_ms: float, groups: np.ndarray | None = None, interval: bool = True,
          new_split: tuple[int, int] = (0, 0)) -> Score:
    """The trial's figures on the validation frames: objective, 95% interval, operating point, tie-break.
    With groups (sessions) the recall bound is a new session's, and the interval is where the precision of a
    new split like the test one (`new_split`: its sessions and frames) would fall at the chosen threshold:
    the interval the test figure is to be judged against, not the narrower one of the pooled mean."""
    floor, sure = objective.recall_floor, objective.recall_confidence
    op = precision_at_recall(y, prob, floor, sure, groups=groups)
    sessions, frames = new_split
    if not interval:
        low, high = op.precision, op.precision
    elif groups is not None and sessions and len(np.unique(groups)) >= MIN_SESSIONS:
        low, high = expected_on_new_data(y, prob, op.threshold, groups, sessions, frames, seed=seed)["precision"]
    else:
        low, high = objective_interval(y, prob, floor, seed=seed, confidence=sure)
    return Score(op.precision, (low, high), op.recall, op.threshold, op.reason, op.note,
                 tie_break_value(objective.tie_break, y, prob, params=params, latency_ms=latency_ms),
                 tie_break_value("pr_auc", y, prob))
