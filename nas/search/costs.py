"""What a proposal will cost before it runs: its network's arithmetic (multiply-adds, from the values, with
channels in the blocks the CPU computes them in) and a fixed share per frame and per input pixel, weighed by
what the run's finished trials cost per epoch (`search.cost_aware`).

Why not multiply-adds alone: on this machine a trial's time is far from proportional to them. Fitted run by
run to the 202 trials of 21 fifteen-minute searches (results/dev-*: plain and residual spaces, 48 and 64 px),
seconds an epoch = a * MACs + b * pixels + c leaves c, a cost that does not shrink with the network
(per-step Python and Keras work, reading and augmenting frames, the folds' predictions), at 0.35-0.78 s an
epoch: 50-90% of a small 48 px network's whole time. And a network of 12, 18, 27, 40 channels (filters 12,
growth 1.5) took 1.6x what its multiply-adds said: oneDNN computes AVX-512 convolutions in blocks of 16
channels (its nChw16c layout), so 12 channels cost as 16 and 18 as 32 (CHANNEL_BLOCK).

The first model here (MACs and pixels, their ratio from two recipe timings) priced a run's first small 48 px
networks 30-45% under, and a search started one the budget could not finish. The prior's shape (PIXEL_MACS,
FRAME_MACS) is the median of the per-run fits of the plain-space searches (results/dev-Y, channels in blocks).
Replayed on the residual-space searches, which it was not fitted on, it predicts each trial from the trials
finished before it with median error 0.075 against the first model's 0.122, 90th percentile 0.15 against
0.38, and none of 72 trials more than 30% under (against 12) (benchmarks/costs.py; README "What a trial
costs"). A run scales the prior to its own timed trials; once MIN_FIT of them differ enough in arithmetic
against fixed work (SPREAD), it also fits the balance of the two (any machine: a GPU's far cheaper
arithmetic included). The fixed work's own shape (pixels against frames) stays the prior's: the searched
sizes are too few and too close (48 and 64 px) to tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nas.errors import NasError
from nas.models import network_macs
from nas.space import SearchSpace, trial_values
from nas.trial import TrialRecord

CHANNEL_BLOCK = 16  # channels are counted in blocks of 16, as oneDNN computes them on AVX-512 (module docstring)
PIXEL_MACS = 1.2e3  # an input pixel costs as much time as ~1,200 multiply-adds (module docstring)
FRAME_MACS = 5.2e6  # and a frame, whatever its size, as ~5.2 million (at batch 32: per-step work is most of it)
SPREAD = 1.5  # the balance is fitted once the timed trials' fixed-to-MACs ratios differ this much ...
MIN_FIT = 3  # ... over at least this many trials (two near-alike ones would fit timing noise)


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
    return Work(float(network_macs(values, size, CHANNEL_BLOCK)), float(size * size),
                int(values.get("training.epochs", default_epochs)))


def fixed(w: Work) -> float:
    """The work of a frame that does not grow with the network, in multiply-add equivalents (the prior's shape)."""
    return PIXEL_MACS * w.pixels + FRAME_MACS


@dataclass(frozen=True)
class CostModel:
    """Seconds an epoch = per_mac * (MACs + fixed_weight * fixed work); per_mac None until a trial has been
    timed (then only relative costs are known: ranking still works, a deadline cannot be judged)."""

    per_mac: float | None
    fixed_weight: float = 1.0  # the fixed work's weight against the arithmetic: 1 is the prior's balance

    def relative(self, w: Work) -> float:
        return w.macs + self.fixed_weight * fixed(w)

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
    """The prior's shape scaled to the run's timed trials (the median ratio); with MIN_FIT trials whose
    fixed-to-MACs ratios differ by SPREAD, the balance of arithmetic and fixed work fitted too (non-negative
    least squares, each row weighted by 1/seconds so that relative errors count; kept only if both are
    positive); with none timed, only the prior's relative costs."""
    if not observations:
        return CostModel(None)
    ratios = [fixed(w) / max(w.macs, 1.0) for w, _ in observations]
    if len(observations) >= MIN_FIT and max(ratios) >= SPREAD * min(ratios):
        from scipy.optimize import nnls

        a = np.array([[w.macs / s, fixed(w) / s] for w, s in observations])
        coef, _ = nnls(a, np.ones(len(observations)))
        if coef.min() > 0:  # a zero coefficient would price all networks alike, or ignore the arithmetic
            return CostModel(float(coef[0]), float(coef[1] / coef[0]))
    prior = CostModel(1.0)
    return CostModel(float(np.median([s / prior.relative(w) for w, s in observations])))
