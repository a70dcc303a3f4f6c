"""What proposes trials and what builds them: the oracle named by search.tuner (with the space's warm
starts first), and the space as a KerasTuner HyperModel."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras_tuner
import numpy as np
from keras_tuner.engine.trial import TrialStatus as KTStatus

from nas import ktadapter
from nas.automodel import AutoKerasHyperModel
from nas.config import BudgetConfig, Experiment, SearchConfig
from nas.errors import NasError
from nas.models import SpaceHyperModel
from nas.search import costs
from nas.space import SearchSpace
from nas.trial import Event, TrialRecord

OBJECTIVE = keras_tuner.Objective("score", direction="max")


def make_hypermodel(exp: Experiment, space: SearchSpace, n_train: int = 0):
    """The space as a KerasTuner HyperModel: our CNN families, or an AutoKeras graph for tuner autokeras."""
    size, floor, tuner = exp.data.image_size, exp.objective.recall_floor, exp.search.tuner
    if tuner == "autokeras":
        if "autokeras" not in space.sections:
            raise NasError(f"{space.source}: search.tuner = autokeras needs an autokeras: section in the space")
        if "loss" in space.sections:  # AutoKeras's head compiles its own cross-entropy; a named loss would be ignored
            raise NasError(f"{space.source}: loss: is for the CNN families (tuner random, bayesian or hyperband); "
                           "search.tuner = autokeras trains with AutoKeras's cross-entropy: remove the loss: section")
        return AutoKerasHyperModel(space, size, floor, n_train, exp.search.batch_size, exp.budget.epochs)
    if "blocks" not in space.sections:
        raise NasError(f"{space.source}: search.tuner = {tuner} needs a blocks: section in the space "
                       "(a space with only autokeras: is for tuner autokeras)")
    return SpaceHyperModel(space, size, floor)


@dataclass(frozen=True)
class CostContext:
    """What cost-aware proposals read: the run's trials so far (their times), where events go, the deadline,
    and what one trial trains (epochs a fold, folds; 1 without cross-validation) at which default size."""

    trials: Callable[[], dict[str, TrialRecord]]
    emit: Callable[..., None]
    deadline: float | None
    epochs: int
    folds: int
    image_size: int


def make_oracle(search: SearchConfig, budget: BudgetConfig, space: SearchSpace, cost: CostContext | None = None):
    """The proposal algorithm named by search.tuner (cost-aware with search.cost_aware and a CostContext)."""
    common = dict(objective=OBJECTIVE, seed=search.seed + 1,  # KerasTuner reads seed 0 as "no seed"
                  max_consecutive_failed_trials=search.max_consecutive_failures)
    tuner = search.tuner
    if space.warm_start and tuner not in ("random", "bayesian"):
        raise NasError(f"{space.source}: warm_start works with search.tuner random or bayesian, not {tuner}")
    if tuner == "random":
        oracle = warm_started(keras_tuner.oracles.RandomSearchOracle(max_trials=budget.max_trials, **common), space)
    elif tuner == "bayesian":
        oracle = warm_started(untried(keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=budget.max_trials, num_initial_points=min(search.bayesian_initial_points, budget.max_trials),
            **common)), space)
    elif tuner == "hyperband":
        # brackets repeat until max_trials caps them, so the budget means the same for every tuner
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max(2, budget.epochs), factor=search.hyperband_factor,
                                                     hyperband_iterations=budget.max_trials, **common)
        oracle.max_trials = budget.max_trials
    elif tuner == "autokeras":  # AutoKeras's own default search algorithm, over the AutoKeras graph
        from autokeras.tuners.greedy import GreedyOracle

        common.pop("max_consecutive_failed_trials")
        oracle = GreedyOracle(max_trials=budget.max_trials, **common)
        oracle.max_consecutive_failed_trials = search.max_consecutive_failures
    else:
        raise NasError(f"search.tuner = {tuner!r}: unknown tuner")
    oracle.verbose = 0
    for name in ("cost_cooling", "noise_aware"):
        if getattr(search, name) and not search.cost_aware:
            raise NasError(f"search.{name} = true changes cost-aware proposals: set search.cost_aware = true too")
    if search.cost_aware:
        if tuner not in ("random", "bayesian"):
            raise NasError(f"search.cost_aware = true works with search.tuner random or bayesian, not {tuner}")
        if cost is not None:
            oracle = cost_aware(oracle, space, cost, Cooling() if search.cost_cooling else None, search.noise_aware)
    return oracle


def untried(oracle):
    """Never propose a configuration already tried. KerasTuner's Bayesian oracle returns the Gaussian
    process's optimum as it is, and over choice dimensions with near-equal scores (trials raced out on one
    fold) that optimum repeats: 6 of 12 proposals were repeats in one run here. A repeat becomes a random
    untried point instead."""
    propose = oracle.populate_space

    def populate_space(trial_id):
        proposal = propose(trial_id)
        if proposal.get("status") == KTStatus.RUNNING and ktadapter.is_duplicate(oracle, proposal["values"]):
            values = ktadapter.random_untried(oracle)
            return {"status": KTStatus.RUNNING, "values": values} if values else {"status": KTStatus.STOPPED, "values": None}
        return proposal

    oracle.populate_space = populate_space
    return oracle


def pending_warm_starts(oracle, space: SearchSpace) -> list[dict]:
    """The space's warm starts not tried yet, in the space's order."""
    tried = [t.hyperparameters.values for t in oracle.trials.values()]
    return [dict(start) for start in space.warm_start
            if not any(all(v.get(k) == x for k, x in start.items()) for v in tried)]


def warm_started(oracle, space: SearchSpace):
    """Propose the space's warm_start configurations first, each once (a resumed search skips those already
    tried), then hand over to the oracle's own algorithm, which counts them as its first observations."""
    if not space.warm_start:
        return oracle
    propose = oracle.populate_space

    def populate_space(trial_id):
        starts = pending_warm_starts(oracle, space)
        return {"status": KTStatus.RUNNING, "values": starts[0]} if starts else propose(trial_id)

    oracle.populate_space = populate_space
    return oracle


CANDIDATES = 2048  # points of the unit box the acquisition is judged on (KerasTuner's own optimizer: 50 restarts)
RANDOM_TRIES = 256  # random untried proposals drawn for one that fits the time left


class Pricing:
    """One proposal's view of cost: the cost model fitted to the run's timed trials so far, and the time left."""

    def __init__(self, space: SearchSpace, ctx: CostContext):
        self.space, self.ctx = space, ctx
        self.model = costs.fit(costs.timed(ctx.trials().values(), space, ctx.image_size))
        self.left = None if ctx.deadline is None else ctx.deadline - time.time()
        self.rejected = 0  # untried proposals turned down for time

    def work(self, values: dict) -> costs.Work | None:
        try:
            return costs.work(self.space, values, self.ctx.image_size, self.ctx.epochs)
        except NasError:  # a warm start naming only some keys: priced when it has run
            return None

    def seconds(self, values: dict) -> float | None:
        """The trial's predicted seconds: every epoch of every fold (None until a trial has been timed)."""
        w = self.work(values)
        per_epoch = None if w is None else self.model.seconds_per_epoch(w)
        return None if per_epoch is None else per_epoch * w.epochs * self.ctx.folds

    def relative(self, values: dict) -> float:
        w = self.work(values)
        return 1.0 if w is None else self.model.relative(w) * w.epochs

    def fits(self, values: dict) -> bool:
        need = self.seconds(values)
        ok = self.left is None or need is None or need <= self.left
        self.rejected += not ok
        return ok

    def stop_reason(self) -> str:
        return (f"no untried proposal is predicted to finish all its folds in the {max(self.left, 0):.0f} s left"
                if self.rejected and self.left is not None else "")


class Cooling:
    """The exponent a on cost in expected improvement per cost^a (Lee, Eriksson, Perrone and Seeger, "Cost-aware
    Bayesian optimization", 2020: CArBO's cost cooling): 1 at the first proposal of the Gaussian process in this
    process, falling linearly to 0 at the deadline or at the proposal of the last of max_trials, whichever comes
    first: cheap exploration early, the end of the budget on what the process expects to be best. A resumed
    search starts its own cooling with its own budget. Measured: alone it changed none of 35 proposals of a
    60-minute search on magnification (`results/dev-M60C`), because KerasTuner's process predicted the same
    everywhere and any power of the cost then picks the cheapest; it matters with `search.noise_aware`."""

    def __init__(self):
        self.start: tuple[float, int] | None = None  # (time, trials done) at the process's first proposal

    def exponent(self, deadline: float | None, done: int, max_trials: int) -> float:
        now = time.time()
        if self.start is None:
            self.start = (now, done)
        began, done_then = self.start
        share = (max_trials - done - 1) / max(max_trials - done_then - 1, 1)  # the last proposal: 0
        if deadline is not None:  # whichever budget ends first
            share = min(share, (deadline - now) / max(deadline - began, 1e-9))
        return float(min(max(share, 0.0), 1.0))


def cost_aware(oracle, space: SearchSpace, ctx: CostContext, cooling: Cooling | None = None,
               noise_aware: bool = False):
    """Proposals that weigh what a trial costs (`search.cost_aware`).

    - Past the initial points, the Gaussian process's proposal is, of CANDIDATES random points, the one with
      the highest expected improvement per predicted second (Snoek, Larochelle and Adams, NeurIPS 2012), not
      KerasTuner's upper confidence bound: a 48 px trial that costs a third of a 64 px residual one need
      promise only a third as much. The cost is `nas.search.costs`: the network's multiply-adds (channels in
      blocks of 16) and a fixed share per frame and input pixel, times its epochs, weighed by the run's timed
      trials.
    - No new proposal (warm starts, random points, the process's) starts when it is predicted not to finish
      all its folds before the deadline: a warm start that does not fit is passed over, any other proposal
      replaced by the best candidate that fits. When none fits, the search ends there (`stop_reason`)
      instead of starting a trial the budget cuts short; `nas resume` with more time goes on. (Trials
      KerasTuner hands out again, a dead worker's or an interrupted one, are not proposals: they continue.)
      Each proposal is logged (`trial_proposed`: predicted seconds, and which rule proposed it).
    - With `search.cost_cooling` (a `Cooling`), the process divides by cost^a with a falling from 1 to 0 over the
      rest of the budget, and logs a (`cost_exponent`).
    - With `search.noise_aware` the process is `ktadapter.noise_aware_process`, not KerasTuner's."""
    propose = oracle.populate_space
    bayesian = isinstance(oracle, keras_tuner.oracles.BayesianOptimizationOracle)

    def populate_space(trial_id):
        price, extra = Pricing(space, ctx), {}
        done = sum(t.status == KTStatus.COMPLETED for t in oracle.trials.values())
        starts = [w for w in pending_warm_starts(oracle, space) if price.fits(w)]
        if starts:
            values, how = starts[0], "warm start"
        elif bayesian and done >= oracle.num_initial_points:
            exponent = 1.0 if cooling is None else cooling.exponent(ctx.deadline, done, oracle.max_trials)
            values, how = per_second(oracle, price, exponent, noise_aware)
            if cooling is not None:
                extra["cost_exponent"] = round(exponent, 3)
        else:
            proposal = propose(trial_id)
            if proposal.get("status") != KTStatus.RUNNING:
                return proposal
            values, how = proposal["values"], "initial point" if bayesian else "random"
            if not price.fits(values):
                values, how = random_fitting(oracle, price), "random point that fits the time left"
        if values is None:
            oracle.cost_stop = price.stop_reason()
            return {"status": KTStatus.STOPPED, "values": None}
        need = price.seconds(values)
        ctx.emit(Event.TRIAL_PROPOSED, trial_id=trial_id, proposed_by=how,
                 predicted_seconds=None if need is None else round(need, 1), **extra)
        return {"status": KTStatus.RUNNING, "values": values}

    oracle.populate_space = populate_space
    return oracle


def stop_reason(oracle) -> str:
    """Why a cost-aware oracle ended the search ('' if it did not)."""
    return getattr(oracle, "cost_stop", "")


def expected_improvement(mu: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """E[max(best - f, 0)] for f ~ N(mu, sd): the improvement on the lowest value seen (KerasTuner's
    Gaussian process models the negated score)."""
    from scipy.stats import norm

    sd = np.maximum(sd, 1e-12)
    z = (best - mu) / sd
    return (best - mu) * norm.cdf(z) + sd * norm.pdf(z)


def per_second(oracle, price: Pricing, exponent: float = 1.0, noise_aware: bool = False) -> tuple[dict | None, str]:
    """Of CANDIDATES random points, the untried one with the highest expected improvement per predicted
    second (to the power `exponent`: `Cooling`) that fits the time left; ties (no improvement expected
    anywhere) go to the lowest predicted value. None of them untried: a random untried point, as the
    `untried` wrapper does."""
    gp, bounds = ktadapter.gaussian_process(oracle, noise_aware)
    if gp is None:
        return random_fitting(oracle, price), "random point that fits the time left"
    points = ktadapter.unit_candidates(oracle, bounds, CANDIDATES)
    mu, sd = (np.ravel(a) for a in gp.predict(points, return_std=True))
    scores = [t.score for t in oracle.trials.values() if t.status == KTStatus.COMPLETED and t.score is not None]
    best = -max(scores) if scores else float(np.min(mu))
    values = [ktadapter.vector_to_values(oracle, p) for p in points]
    rate = expected_improvement(mu, sd, best) / np.array([price.relative(v) for v in values]) ** exponent
    untried = False
    for i in np.lexsort((mu, -rate)):  # best first: the duplicate check stops at the first that fits
        if ktadapter.is_duplicate(oracle, values[i]):
            continue
        untried = True
        if price.fits(values[i]):
            return values[i], "expected improvement per second"
    if untried:
        return None, ""
    return random_fitting(oracle, price), "random point that fits the time left"


def random_fitting(oracle, price: Pricing) -> dict | None:
    """A random untried proposal that fits the time left, or None after RANDOM_TRIES draws (or when
    KerasTuner finds no untried values)."""
    for _ in range(RANDOM_TRIES):
        values = ktadapter.random_untried(oracle)
        if values is None or price.fits(values):
            return values
    return None
