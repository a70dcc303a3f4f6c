"""Racing under cross-validation: a trial is scored on its first fold, and trains further folds only while
it can still beat the incumbent (the best trial that finished every fold). Weak trials cost one fold.

The comparison is paired: the candidate's and the incumbent's out-of-fold probabilities on the same frames
(the folds the candidate has finished), resampled together, so a fold that is hard for every model does not
count against the candidate. It stops when even the upper end of the difference's one-sided interval is
below zero.
"""

from __future__ import annotations

import numpy as np

from nas.config import ObjectiveConfig
from nas.objective import precision_at_recall
from nas.prepare import RunFrames
from nas.runlog import RunDir
from nas.trial import TrialRecord, rank_key

RACE_CONFIDENCE = 0.9  # one-sided: a trial stops when it is worse than the incumbent with 90% confidence
RESAMPLES = 200
OOF_PROBS = "oof_probs.npy"


def incumbent(run: RunDir, trials: dict[str, TrialRecord], folds: int) -> tuple[TrialRecord, np.ndarray] | None:
    """The best trial that finished every fold, with its pooled out-of-fold probabilities."""
    complete = sorted((t for t in trials.values() if t.complete and t.folds_total == folds), key=rank_key)
    for best in complete:
        path = run.trial_dir(best.trial_id) / OOF_PROBS
        if path.is_file():
            return best, np.load(path)
    return None


def race(run: RunDir, trials: dict[str, TrialRecord], frames: RunFrames, probs: list[np.ndarray],
         objective: ObjectiveConfig, seed: int = 0) -> str:
    """Why the candidate (its probabilities on its finished folds) should stop, or '' to go on."""
    total = len(frames.plans())
    best = incumbent(run, trials, total)
    if best is None:
        return ""
    record, base = best
    cand = np.concatenate(probs)
    rows = frames.validation_rows()[: len(cand)]
    y, base = frames.labels[rows], base[: len(cand)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(RESAMPLES):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(_objective(y[idx], cand[idx], objective) - _objective(y[idx], base[idx], objective))
    upper = float(np.quantile(diffs, RACE_CONFIDENCE))
    if upper >= 0:
        return ""
    mine, theirs = _objective(y, cand, objective), _objective(y, base, objective)
    return (f"raced out after {len(probs)} of {total} folds: {mine:.3f} against the incumbent trial "
            f"{record.trial_id}'s {theirs:.3f} on the same frames (at best {upper:+.3f} with {RACE_CONFIDENCE:.0%} confidence)")


def _objective(y: np.ndarray, prob: np.ndarray, objective: ObjectiveConfig) -> float:
    return precision_at_recall(y, prob, objective.recall_floor, objective.recall_confidence).precision
