"""What proposes trials and what builds them: the oracle named by search.tuner (with the space's warm
starts first), and the space as a KerasTuner HyperModel."""

from __future__ import annotations

import keras_tuner
from keras_tuner.engine.trial import TrialStatus as KTStatus

from nas import ktadapter
from nas.automodel import AutoKerasHyperModel
from nas.config import BudgetConfig, Experiment, SearchConfig
from nas.errors import NasError
from nas.models import SpaceHyperModel
from nas.space import SearchSpace

OBJECTIVE = keras_tuner.Objective("score", direction="max")


def make_hypermodel(exp: Experiment, space: SearchSpace, n_train: int = 0):
    """The space as a KerasTuner HyperModel: our CNN families, or an AutoKeras graph for tuner autokeras."""
    size, floor, tuner = exp.data.image_size, exp.objective.recall_floor, exp.search.tuner
    if tuner == "autokeras":
        if "autokeras" not in space.sections:
            raise NasError(f"{space.source}: search.tuner = autokeras needs an autokeras: section in the space")
        return AutoKerasHyperModel(space, size, floor, n_train, exp.search.batch_size, exp.budget.epochs)
    if "blocks" not in space.sections:
        raise NasError(f"{space.source}: search.tuner = {tuner} needs a blocks: section in the space "
                       "(a space with only autokeras: is for tuner autokeras)")
    return SpaceHyperModel(space, size, floor)


def make_oracle(search: SearchConfig, budget: BudgetConfig, space: SearchSpace):
    """The proposal algorithm named by search.tuner."""
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


def warm_started(oracle, space: SearchSpace):
    """Propose the space's warm_start configurations first, each once (a resumed search skips those already
    tried), then hand over to the oracle's own algorithm, which counts them as its first observations."""
    if not space.warm_start:
        return oracle
    propose = oracle.populate_space

    def populate_space(trial_id):
        tried = [t.hyperparameters.values for t in oracle.trials.values()]
        for start in space.warm_start:
            if not any(all(v.get(k) == x for k, x in start.items()) for v in tried):
                return {"status": KTStatus.RUNNING, "values": dict(start)}
        return propose(trial_id)

    oracle.populate_space = populate_space
    return oracle
