"""Which hyperparameters mattered: a random forest predicts the objective from a trial's `param_*` values,
and each parameter's importance is how much worse its predictions get on held-out trials when that
parameter's column is shuffled (permutation importance, out of fold, so a forest that memorised a few trials
cannot make noise look important).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_TRIALS = 10  # below this a forest fitted on k-1 folds of a handful of trials says nothing we could trust
FOLDS = 5
REPEATS = 10


@dataclass(frozen=True)
class Importance:
    """Parameters ranked by importance (share of the objective's variance lost when shuffled, with its
    spread over folds and repeats); `note` says when the estimate cannot be made or should not be trusted."""

    ranking: list[tuple[str, float, float]] = field(default_factory=list)
    trials: int = 0
    cv_r2: float | None = None
    note: str = ""


def encode(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """The searched `param_*` columns (those that vary) as a float matrix: numbers as they are, anything else
    (names, booleans) as ordinal codes in sorted order; a missing value sits below every present one."""
    names = sorted({k for r in rows for k in r if k.startswith("param_")})
    columns, kept = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        if len({repr(v) for v in values}) < 2:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        if numeric:
            col = np.array([np.nan if v is None else float(v) for v in values])
        else:
            codes = {s: i for i, s in enumerate(sorted({repr(v) for v in values if v is not None}))}
            col = np.array([np.nan if v is None else float(codes[repr(v)]) for v in values])
        present = col[~np.isnan(col)]
        floor = (present.min() - (np.ptp(present) or 1.0)) if present.size else 0.0
        columns.append(np.where(np.isnan(col), floor, col))
        kept.append(name)
    matrix = np.stack(columns, axis=1) if columns else np.zeros((len(rows), 0))
    return kept, matrix


def importance(rows: list[dict[str, Any]], min_trials: int = MIN_TRIALS, seed: int = 0) -> Importance:
    """Permutation importance of each varying `param_*` column for the `objective` of finished trials."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold

    rows = [r for r in rows if r.get("objective") is not None]
    names, x = encode(rows)
    y = np.array([float(r["objective"]) for r in rows])
    if len(rows) < min_trials:
        return Importance(trials=len(rows), note=f"too few trials to tell: {len(rows)} finished, the estimate needs at "
                                                 f"least {min_trials}")
    if not names:
        return Importance(trials=len(rows), note="no hyperparameter varied between these trials")
    if np.ptp(y) == 0:
        return Importance(trials=len(rows), note="every trial scored the same objective: nothing to explain")
    drops = {n: [] for n in names}
    predicted = np.empty_like(y)
    rng = np.random.default_rng(seed)
    for train, test in KFold(min(FOLDS, len(rows)), shuffle=True, random_state=seed).split(x):
        forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)
        forest.fit(x[train], y[train])
        predicted[test] = forest.predict(x[test])
        base = np.mean((forest.predict(x[test]) - y[test]) ** 2)
        for j, name in enumerate(names):
            for _ in range(REPEATS):
                shuffled = x[test].copy()
                shuffled[:, j] = rng.permutation(shuffled[:, j])
                drops[name].append(np.mean((forest.predict(shuffled) - y[test]) ** 2) - base)
    variance = float(np.var(y))
    cv_r2 = 1.0 - float(np.mean((predicted - y) ** 2)) / variance
    ranking = sorted(((n, float(np.mean(d)) / variance, float(np.std(d)) / variance) for n, d in drops.items()),
                     key=lambda t: -t[1])
    note = ""
    if cv_r2 < 0.1:
        note = (f"the parameters predict little of the objective on held-out trials (out-of-fold R² {cv_r2:.2f}): "
                "read the ranking as weak evidence")
    return Importance(ranking, len(rows), cv_r2, note)
