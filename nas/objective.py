"""The objective, exactly: precision at a recall floor from validation probabilities, its intervals, and
the figures the reference reports. (The rule that ranks trials is `nas.trial.rank_key`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)


@dataclass(frozen=True)
class Operating:
    """The chosen operating point: the best precision among thresholds whose recall reaches the floor."""

    precision: float
    recall: float
    threshold: float
    reason: str = ""  # why there is no operating point (the score is then 0)
    note: str = ""  # how the point was chosen when the requested rule could not apply


def recall_lower_bound(recall: np.ndarray, positives: int, confidence: float) -> np.ndarray:
    """One-sided Wilson lower bound of a recall measured on `positives` examples, at `confidence`."""
    z = NormalDist().inv_cdf(confidence)
    n, p = positives, np.asarray(recall, dtype=np.float64)
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def precision_at_recall(y_true: np.ndarray, prob: np.ndarray, floor: float, confidence: float = 0.0) -> Operating:
    """Highest precision among thresholds with recall >= floor (scikit-learn's PR curve, exact).

    With confidence > 0 a threshold qualifies only if the recall's one-sided lower bound at that
    confidence reaches the floor: a threshold tuned to exactly 0.90 recall on one validation set lands
    below it on new frames about half the time, and further below on a new chip. A validation set with
    too few positives to ever show that falls back to the plain rule, and `note` says so.
    Ties in precision go to the higher threshold (fewer positives called). With no positives in y_true,
    or no threshold reaching the floor, the score is 0 and `reason` says why.
    """
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    if y_true.sum() == 0:
        return Operating(0.0, 0.0, 1.0, "no positive examples in this split")
    if not np.isfinite(prob).all():
        return Operating(0.0, 0.0, 1.0, "the model produced NaN or infinite probabilities")
    precision, recall, thresholds = precision_recall_curve(y_true, prob)
    # precision[i], recall[i] belong to thresholds[i]; the last point (recall 0) has no threshold
    precision, recall = precision[:-1], recall[:-1]
    note = ""
    if confidence > 0 and recall_lower_bound(np.array([1.0]), int(y_true.sum()), confidence)[0] < floor:
        note = (f"{int(y_true.sum())} positives cannot show recall >= {floor:g} with {confidence:g} confidence; "
                "the threshold is chosen on val recall itself")
        confidence = 0.0
    reach = recall_lower_bound(recall, int(y_true.sum()), confidence) if confidence > 0 else recall
    ok = np.flatnonzero(reach >= floor - 1e-12)
    if ok.size == 0:
        sure = f" with {confidence:g} confidence" if confidence > 0 else ""
        return Operating(0.0, float(recall.max(initial=0.0)), 1.0, f"no threshold reaches recall {floor:g}{sure}")
    best = ok[np.flatnonzero(precision[ok] == precision[ok].max())[-1]]  # the highest such threshold
    return Operating(float(precision[best]), float(recall[best]), float(thresholds[best]), note=note)


def tie_break_value(name: str, y_true: np.ndarray, prob: np.ndarray, params: int = 0, latency_ms: float = 0.0) -> float:
    """The second figure, larger is better: PR-AUC, ROC-AUC, or fewer parameters / lower latency."""
    if name == "pr_auc":
        return float(average_precision_score(y_true, prob)) if np.sum(y_true) else 0.0
    if name == "roc_auc":
        return float(roc_auc_score(y_true, prob)) if 0 < np.sum(y_true) < len(y_true) else 0.0
    if name == "neg_params":
        return 1.0 / (1.0 + params)
    if name == "neg_latency_ms":
        return 1.0 / (1.0 + latency_ms)
    raise ValueError(f"unknown tie-break {name!r}")


def classification_report(y_true: np.ndarray, prob: np.ndarray, threshold: float, floor: float) -> dict[str, Any]:
    """The figures the reference reports, at a given threshold, plus the exact precision at the floor."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    y_pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    op = precision_at_recall(y_true, prob, floor)
    return {
        "n": int(len(y_true)),
        "positives": int(y_true.sum()),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "pr_auc": tie_break_value("pr_auc", y_true, prob),
        "precision_at_floor": op.precision,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def objective_interval(y_true: np.ndarray, prob: np.ndarray, floor: float, n: int = 200, seed: int = 0,
                       confidence: float = 0.0) -> list[float]:
    """95% percentile-bootstrap interval of the exact objective (the threshold re-chosen in each resample)."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n):
        idx = rng.integers(0, len(y_true), len(y_true))
        scores.append(precision_at_recall(y_true[idx], prob[idx], floor, confidence).precision)
    return [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]


def bootstrap_interval(y_true: np.ndarray, prob: np.ndarray, threshold: float, n: int, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of precision and recall at a fixed threshold."""
    if n <= 0:
        return {}
    y_true = np.asarray(y_true).astype(int).ravel()
    y_pred = (np.asarray(prob).ravel() >= threshold).astype(int)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    t, p = y_true[idx], y_pred[idx]
    tp = (t & p).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(p.sum(1) > 0, tp / p.sum(1), 0.0)
        rec = np.where(t.sum(1) > 0, tp / t.sum(1), 0.0)
    return {
        "precision_95ci": [float(np.percentile(prec, 2.5)), float(np.percentile(prec, 97.5))],
        "recall_95ci": [float(np.percentile(rec, 2.5)), float(np.percentile(rec, 97.5))],
    }
