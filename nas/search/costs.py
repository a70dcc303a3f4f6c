"""What a proposal will cost before it runs: its network's arithmetic (multiply-adds, from the values) and
its input pixels, weighed by what the run's finished trials cost per epoch (`search.cost_aware`).

Why two terms: a trial's time is not proportional to its multiply-adds. On this machine's recipe runs
(benchmarks/recipe.py, README "How the recommended experiment was chosen") the plain 64 px warm start took
1.00, the same network with residual blocks 2.50x at 64 px and 1.39-1.52x at 48 px, the plain one ~0.6x at
48 px, while their multiply-adds are 1 : 3.67 : 2.06 : 0.56. Time = a * MACs + b * pixels fits all four
(1.00, 2.50 by construction; 1.40 and 0.56 predicted): data, augmentation and the memory-bound layers grow
with the frame, not with the arithmetic. PIXEL_MACS is b / a from those two measurements, the prior until
the run has timed trials that differ in that ratio by a fifth; then both are fitted to the run's own trials (any
machine, a GPU's far larger per-pixel share included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nas.errors import NasError
from nas.models import network_macs
from nas.space import SearchSpace, trial_values
from nas.trial import TrialRecord

PIXEL_MACS = 2.8e3  # a frame's pixel costs as much time as ~2,800 multiply-adds (module docstring)
SPREAD = 1.2  # both coefficients are fitted once the timed trials' pixels-to-MACs ratios differ this much


@dataclass(frozen=True)
class Work:
    """What one frame asks of a network per pass (multiply-adds, input pixels), and the trial's epochs a fold."""

    macs: float
    pixels: float
    epochs: int = 0


def work(space: SearchSpace, searched: dict, default_size: int, default_epochs: int = 0) -> Work:
    """The work of a trial's network from its searched values (the space's constants filled in); its epochs
    are the space's `training.epochs` where it sets them, else `default_epochs` (budget.epochs)."""
    values = trial_values(space, searched)
    size = int(values.get("input.image_size", default_size))
    return Work(float(network_macs(values, size)), float(size * size), int(values.get("training.epochs", default_epochs)))


@dataclass(frozen=True)
class CostModel:
    """Seconds an epoch = per_mac * MACs + per_pixel * pixels; per_mac None until a trial has been timed
    (then only relative costs are known: ranking still works, a deadline cannot be judged)."""

    per_mac: float | None
    per_pixel_macs: float = PIXEL_MACS  # per_pixel / per_mac

    def relative(self, w: Work) -> float:
        return w.macs + self.per_pixel_macs * w.pixels

    def seconds_per_epoch(self, w: Work) -> float | None:
        return None if self.per_mac is None else self.per_mac * self.relative(w)


def timed(records: Iterable[TrialRecord], space: SearchSpace, default_size: int) -> list[tuple[Work, float]]:
    """(work, seconds per epoch) of every trial that trained: its whole time (training, predicting its held-out
    frames, scoring) over the epochs it ran in all its folds. A trial resumed mid-fold counts only what its
    last process spent, so it reads cheaper than it was; resumes are rare and the fit is robust to one."""
    out = []
    for rec in records:
        epochs = sum(f.epochs_run for f in rec.folds) if rec.folds else (rec.epochs_run or 0)
        if not rec.usable or not rec.seconds or epochs <= 0:
            continue
        try:
            out.append((work(space, rec.hyperparameters, default_size), rec.seconds / epochs))
        except NasError:  # a trial of another space version: its time says nothing about this one
            continue
    return out


def fit(observations: list[tuple[Work, float]]) -> CostModel:
    """Both coefficients from the run's trials once their pixels-to-MACs ratios differ by SPREAD (non-negative
    least squares, each row weighted by 1/seconds so that relative errors count; kept only if both are
    positive); else the prior ratio with the scale from the trials timed so far; else only the prior ratio."""
    if not observations:
        return CostModel(None)
    ratios = [w.pixels / max(w.macs, 1.0) for w, _ in observations]
    if max(ratios) >= SPREAD * min(ratios):  # trials alike in that ratio would fit timing noise
        from scipy.optimize import nnls

        a = np.array([[w.macs / s, w.pixels / s] for w, s in observations])
        coef, _ = nnls(a, np.ones(len(observations)))
        if coef.min() > 0:  # a zero coefficient prices all networks of one size alike, or ignores the size
            return CostModel(float(coef[0]), float(coef[1] / coef[0]))
    prior = CostModel(1.0)
    scale = float(np.median([s / prior.relative(w) for w, s in observations]))
    return CostModel(scale)
