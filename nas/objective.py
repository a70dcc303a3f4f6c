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


SESSION_DRAWS = 500  # draws of a new session in the grouped recall bound (seeded: the same answer every time)
MIN_SESSIONS = 3  # fewer groups than this cannot say how sessions vary: the frame-level bound is used


def session_recall_bound(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray, thresholds: np.ndarray,
                         confidence: float, seed: int = 0) -> np.ndarray:
    """For each threshold, the recall a *new session* reaches with probability `confidence`: draw a session
    (one of those seen, alike), draw its positives with replacement, take the recall; the lower quantile
    over draws. Sessions differ (magnification, dose, detector), so a threshold that keeps 0.90 recall on
    the pooled frames can keep far less on one new session: that is what a user at the microscope meets."""
    rng = np.random.default_rng(seed)
    pos = [np.sort(prob[(groups == g) & (y_true == 1)]) for g in np.unique(groups)]
    pos = [p for p in pos if len(p)]
    recalls = np.empty((SESSION_DRAWS, len(thresholds)))
    for b in range(SESSION_DRAWS):
        session = pos[rng.integers(len(pos))]
        drawn = np.sort(rng.choice(session, len(session)))
        recalls[b] = 1.0 - np.searchsorted(drawn, thresholds, side="left") / len(drawn)  # share >= threshold
    return np.quantile(recalls, 1.0 - confidence, axis=0, method="lower")


def precision_at_recall(y_true: np.ndarray, prob: np.ndarray, floor: float, confidence: float = 0.0,
                        groups: np.ndarray | None = None) -> Operating:
    """Highest precision among thresholds with recall >= floor (scikit-learn's PR curve, exact).

    With confidence > 0 a threshold qualifies only if the recall's one-sided lower bound at that
    confidence reaches the floor: a threshold tuned to exactly 0.90 recall on one validation set lands
    below it on new frames about half the time, and further below on a new chip. With `groups` (sessions,
    at least MIN_SESSIONS of them) the bound is that of a new session (session_recall_bound); otherwise
    Wilson's bound on the frames. A split with too few positives to ever show the frame bound falls back
    to the plain rule, and `note` says so.
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
    reach, note = _reach(y_true, prob, groups, recall, thresholds, floor, confidence)
    ok = np.flatnonzero(reach >= floor - 1e-12)
    if ok.size == 0:
        sure = f" with {confidence:g} confidence" if confidence > 0 else ""
        return Operating(0.0, float(recall.max(initial=0.0)), 1.0, f"no threshold reaches recall {floor:g}{sure}")
    best = ok[np.flatnonzero(precision[ok] == precision[ok].max())[-1]]  # the highest such threshold
    return Operating(float(precision[best]), float(recall[best]), float(thresholds[best]), note=note)


def _reach(y_true, prob, groups, recall, thresholds, floor: float, confidence: float) -> tuple[np.ndarray, str]:
    """The recall each threshold is credited with under the confidence rule, and a note on how."""
    if confidence <= 0:
        return recall, ""
    if groups is not None and len(np.unique(np.asarray(groups)[y_true == 1])) >= MIN_SESSIONS:
        return session_recall_bound(y_true, prob, np.asarray(groups), thresholds, confidence), ""
    if recall_lower_bound(np.array([1.0]), int(y_true.sum()), confidence)[0] < floor:
        return recall, (f"{int(y_true.sum())} positives cannot show recall >= {floor:g} with {confidence:g} "
                        "confidence; the threshold is chosen on val recall itself")
    return recall_lower_bound(recall, int(y_true.sum()), confidence), ""


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
                       confidence: float = 0.0, groups: np.ndarray | None = None,
                       threshold: float | None = None) -> list[float]:
    """95% percentile-bootstrap interval of the exact objective. Frames resampled, the threshold re-chosen
    in each resample; or, with groups (sessions) and the chosen threshold, whole sessions resampled and
    the precision at that threshold taken: frames of one session are not independent, and how much the
    figure moves from session to session is what a new session will see."""
    y_true = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    if groups is not None and threshold is not None and len(np.unique(groups)) >= MIN_SESSIONS:
        return _session_interval(y_true, prob >= threshold, np.asarray(groups), rng, n, draw=None)["precision"]
    scores = resampled_objective(y_true, prob, floor, confidence, rng.integers(0, len(y_true), (n, len(y_true))))
    return [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]


def resampled_objective(y_true: np.ndarray, prob: np.ndarray, floor: float, confidence: float,
                        idx: np.ndarray) -> np.ndarray:
    """precision_at_recall(y[i], prob[i], floor, confidence).precision for every row i of `idx` at once: one
    sort of the resamples instead of a PR curve each (200 resamples: ~20x faster than the loop, tested equal)."""
    ys, ps = y_true[idx], prob[idx]
    order = np.argsort(-ps, axis=1, kind="stable")
    ys, ps = np.take_along_axis(ys, order, 1), np.take_along_axis(ps, order, 1)
    tp, fp = np.cumsum(ys, axis=1), np.cumsum(1 - ys, axis=1)
    last_of_tie = np.ones(ps.shape, bool)
    last_of_tie[:, :-1] = ps[:, :-1] != ps[:, 1:]  # a threshold counts every frame scored at or above it
    positives = ys.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, precision = tp / positives, tp / (tp + fp)
        reach = recall
        if confidence > 0:
            bounded = recall_lower_bound(recall, positives, confidence)
            can_show = recall_lower_bound(np.ones_like(positives, float), positives, confidence) >= floor
            reach = np.where(can_show, bounded, recall)  # too few positives: the plain rule, as precision_at_recall
    ok = last_of_tie & (reach >= floor - 1e-12) & (positives > 0)
    return np.where(ok, precision, -np.inf).max(axis=1).clip(min=0.0)


def _session_interval(y_true: np.ndarray, called: np.ndarray, groups: np.ndarray, rng: np.random.Generator, n: int,
                      draw: int | None) -> dict[str, list[float]]:
    """95% intervals of precision and recall at fixed decisions: of a split of `draw` new sessions, or (draw
    None) of the figure pooled over sessions like these. Each is the wider of two: resampling sessions with
    replacement, and Student's t over the sessions' own figures. Why both: resampling k sessions never reaches
    beyond the k values seen, and a new session falls outside their range with probability 2/(k+1) (25% for
    7 sessions), not 5%; the t interval widens for few sessions, resampling keeps skewed spreads."""
    names = np.unique(groups)
    tp = np.array([np.sum(called & (y_true == 1) & (groups == g)) for g in names], float)
    pp = np.array([np.sum(called & (groups == g)) for g in names], float)
    pos = np.array([np.sum((y_true == 1) & (groups == g)) for g in names], float)
    weights = rng.multinomial(draw or len(names), np.full(len(names), 1 / len(names)), size=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = (weights @ tp) / (weights @ pp)
        rec = (weights @ tp) / (weights @ pos)
    return {"precision": _wider(_percentiles95(prec), _t_interval(tp, pp, draw)),
            "recall": _wider(_percentiles95(rec), _t_interval(tp, pos, draw))}


def _t_interval(num: np.ndarray, den: np.ndarray, draw: int | None) -> list[float] | None:
    """95% t interval of a pooled ratio sum(num) / sum(den) over sessions: for `draw` new sessions (a
    prediction: the sessions' spread and the pooled figure's own uncertainty), or for the pooled figure."""
    from scipy.stats import t as student_t

    keep = den > 0
    k = int(keep.sum())
    if k < 2:
        return None
    ratio, size = num[keep] / den[keep], den[keep] / den[keep].mean()
    pooled = num[keep].sum() / den[keep].sum()
    spread = np.sqrt(np.sum(size * (ratio - pooled) ** 2) / (k - 1))
    half = student_t.ppf(0.975, k - 1) * spread * np.sqrt(1 / k + (1 / draw if draw else 0.0))
    return [float(max(0.0, pooled - half)), float(min(1.0, pooled + half))]


def _wider(a: list[float], b: list[float] | None) -> list[float]:
    return a if b is None else [min(a[0], b[0]), max(a[1], b[1])]


def _percentiles95(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [0.0, 1.0]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def expected_on_new_data(y_true: np.ndarray, prob: np.ndarray, threshold: float, groups: np.ndarray | None,
                         sessions: int, frames: int, n: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of the precision and recall the threshold will give on new data like a split of
    `sessions` new sessions (or, ungrouped, `frames` new frames), from validation probabilities."""
    y_true = np.asarray(y_true).astype(int).ravel()
    called = np.asarray(prob).ravel() >= threshold
    rng = np.random.default_rng(seed)
    if groups is not None and sessions and len(np.unique(groups)) >= MIN_SESSIONS:
        return _session_interval(y_true, called, np.asarray(groups), rng, n, draw=sessions)
    idx = rng.integers(0, len(y_true), size=(n, max(1, frames)))
    t, p = y_true[idx], called[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"precision": _percentiles95((t & p).sum(1) / p.sum(1)), "recall": _percentiles95((t & p).sum(1) / t.sum(1))}


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
