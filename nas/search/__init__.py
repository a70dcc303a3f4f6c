"""The search driver, in rooms:

- `lifecycle`: start, resume, join as a worker; the loop that says how a search ended.
- `chief`: serve the oracle to workers.
- `oracles`: the oracle named by search.tuner (warm starts first; cost-aware proposals) and the space as a HyperModel.
- `costs`: what a proposal will cost (its network's arithmetic and pixels, weighed by the run's timed trials).
- `tuner`: the KerasTuner tuner; `run_trial` plans, trains each fold, races, scores and records a trial.
- `fold`: one fold of a trial: restore or build, train, keep weights, predict its val frames.
- `limits`, `racing`, `scoring`: constraints, the race against the incumbent, the trial's exact objective.
- `changes`: refusing to resume an edited experiment or space.
"""

from nas.search.lifecycle import Session, resume_search, start_search, worker_search

__all__ = ["Session", "resume_search", "start_search", "worker_search"]
