"""Everything stem-nas takes from KerasTuner beyond its documented API, in one place.

KerasTuner 1.4.8 (pinned in pyproject.toml) writes its state JSON in place, keeps dead workers' trials for
ever, and serves its oracle over gRPC with private classes. We replace its JSON writer with an atomic one,
re-queue trials through the oracle's private retry queue, and serve the oracle with its own servicer.
`check()` says, in one message, what an installed KerasTuner lacks; `apply()` installs the atomic writer
when a run starts (not at import time, so importing nas changes nothing process-wide).
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np

from nas.errors import NasError

# (module, attribute, what we use it for); all private to KerasTuner
PRIVATE = (
    ("keras_tuner.src.utils", "save_json", "atomic oracle and trial state files"),
    ("keras_tuner.src.distribute.oracle_chief", "OracleServicer", "serving the oracle to workers"),
    ("keras_tuner.src.protos", "get_service_grpc", "serving the oracle to workers"),
)
ORACLE_ATTRIBUTES = ("_retry_queue", "ongoing_trials", "tuner_ids", "trials", "populate_space", "remaining_trials",
                     "_duplicate", "_random_values")
_state = {"applied": False}


def check() -> None:
    """Raise NasError naming every internal this KerasTuner lacks, and the version to install."""
    import keras_tuner

    missing = []
    for module, attribute, why in PRIVATE:
        try:
            if not hasattr(importlib.import_module(module), attribute):
                missing.append(f"{module}.{attribute} ({why})")
        except ImportError:
            missing.append(f"{module} ({why})")
    oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("score", "max"), max_trials=1)
    missing += [f"Oracle.{a} (re-queueing a dead worker's trial)" for a in ORACLE_ATTRIBUTES if not hasattr(oracle, a)]
    bayes = keras_tuner.oracles.BayesianOptimizationOracle(objective=keras_tuner.Objective("score", "max"), max_trials=1)
    missing += [f"BayesianOptimizationOracle.{a} (search.cost_aware)" for a in BAYESIAN_ATTRIBUTES if not hasattr(bayes, a)]
    if missing:
        raise NasError(f"keras-tuner {keras_tuner.__version__} lacks what stem-nas relies on: {'; '.join(missing)}. "
                       "Install the pinned version: pip install keras-tuner==1.4.8")


def apply() -> None:
    """Route every KerasTuner state file through our atomic writer (temp file, fsync, rename): KerasTuner
    writes oracle.json and trial.json in place, so a kill mid-write would truncate them. Idempotent."""
    if _state["applied"]:
        return
    check()
    from keras_tuner.src import utils

    from nas.runlog import atomic_write_text

    def save_json(path, obj) -> str:
        text = json.dumps(obj)
        atomic_write_text(path, text)
        return text

    utils.save_json = save_json
    _state["applied"] = True


def retry_queue(oracle) -> list[str]:
    """The oracle's queue of trial ids to hand out again (private in KerasTuner)."""
    return oracle._retry_queue


def orphaned_trials(oracle) -> list[str]:
    """Trials the oracle counts as running that no tuner holds and no queue will hand out: KerasTuner writes a
    new trial's file before the oracle's state, so a kill between the two leaves a RUNNING trial that counts
    against max_trials and is never run (seen as a resume that ended one trial short after kill -9)."""
    held = {trial.trial_id for trial in oracle.ongoing_trials.values()} | set(oracle._retry_queue)
    return [tid for tid, trial in oracle.trials.items() if trial.status == "RUNNING" and tid not in held]


def is_duplicate(oracle, values: dict) -> bool:
    """Whether these values were tried already (KerasTuner's private record of tried values)."""
    return oracle._duplicate(values)


def random_untried(oracle) -> dict | None:
    """Random values not tried yet (None after KerasTuner's collision limit)."""
    return oracle._random_values()


BAYESIAN_ATTRIBUTES = ("gpr", "num_initial_points", "_vectorize_trials", "_vector_to_values", "_get_hp_bounds",
                       "_random_state")


def gaussian_process(oracle, noise_aware: bool = False):
    """The Bayesian oracle's Gaussian process fitted to every trial so far (KerasTuner's own vectors: each
    value mapped into [0, 1]; scores negated, lower is better; running trials as pessimistic guesses), and
    the bounds of that unit box. None when nothing has finished yet. `noise_aware`: a process that models the
    scores' noise instead of KerasTuner's (`noise_aware_process`)."""
    x, y = oracle._vectorize_trials()
    if not len(y):
        return None, None
    gp = noise_aware_process(x.shape[1], oracle.seed) if noise_aware else oracle.gpr
    gp.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
    return gp, oracle._get_hp_bounds()


def noise_aware_process(dims: int, seed: int | None):
    """A Gaussian process for noisy scores (`search.noise_aware`): a Matern 5/2 kernel with one length scale
    per hyperparameter and a fitted white-noise term. Why: KerasTuner's is isotropic and nearly noise-free
    (alpha 1e-4), and a trial raced out after one fold is a noisy score: one learning rate apart, the same
    network scored 0.68 and 0.86. Fitted to the 78 trials of a 60-minute search on magnification
    (`results/dev-M60`) KerasTuner's process shrank its length scale to 0.008 of the unit box, so it predicted
    the mean and the same spread everywhere: expected improvement was flat, so per second the two cheapest
    networks took 74 of its 75 proposals, and cooling the cost (`search.cost_cooling`) changed none of them.
    This one, on the same trials, fitted noise 0.08 (of the scores' variance) and length scales 0.01-100, and
    cost aside ranked residual networks first."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=np.full(dims, 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5)
              + WhiteKernel(0.1, (1e-5, 1.0)))
    return GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=5, random_state=seed)


def unit_candidates(oracle, bounds, n: int):
    """n points drawn uniformly in the oracle's unit box, from its own seeded random state."""
    return oracle._random_state.uniform(bounds[:, 0], bounds[:, 1], size=(n, bounds.shape[0]))


def vector_to_values(oracle, vector) -> dict:
    """The hyperparameter values a point of the unit box stands for."""
    return oracle._vector_to_values(vector)


def oracle_servicer(oracle) -> tuple[Any, Any]:
    """KerasTuner's gRPC servicer for an oracle, and the function that registers it on a grpc server."""
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    return OracleServicer(oracle), protos.get_service_grpc().add_OracleServicer_to_server
