"""The search driver, in rooms:

- `lifecycle`: start, resume, join as a worker; the loop that says how a search ended.
- `chief`: serve the oracle to workers.
- `oracles`: the oracle named by search.tuner (warm starts first) and the space as a HyperModel.
- `tuner`: the KerasTuner tuner; `run_trial` plans, trains each fold, races, scores and records a trial.
- `fold`: one fold of a trial: restore or build, train, keep weights, predict its val frames.
- `limits`, `racing`, `scoring`: constraints, the race against the incumbent, the trial's exact objective.
- `changes`: refusing to resume an edited experiment or space.
"""

from nas.search.lifecycle import Session, resume_search, start_search, worker_search

__all__ = ["Session", "resume_search", "start_search", "worker_search"]
