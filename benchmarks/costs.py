"""How well does `search.cost_aware` predict what a trial will take? Replays runs' logs: trial by trial, in
the order they finished, the cost model (nas.search.costs) fitted on the trials finished before it predicts
its seconds (per epoch, times the epochs it ran in all its folds), beside a cost-blind prediction (the
median seconds an epoch of the trials before it). No training: the logs are enough.

    python benchmarks/costs.py results/dev-R/*-seed*-n2000-128px/results/haadf/run

Prints one row per run (trials predicted, median and 90th-percentile absolute error relative to the actual
seconds, for both predictors) and, as its last line, a JSON object with every trial's figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # noqa: F401  (quiets TensorFlow's start-up log)
import numpy as np


def replay(run_path: Path) -> dict:
    from nas.reopen import reopen
    from nas.runlog import read_trials
    from nas.search import costs

    opened = reopen(run_path)
    size = opened.exp.data.image_size
    trials = [t for t in read_trials(opened.run.trials_log).values() if t.time is not None]
    trials.sort(key=lambda t: t.time)
    rows = []
    for i, trial in enumerate(trials):
        timed = costs.timed([trial], opened.space, size)
        before = costs.timed(trials[:i], opened.space, size)
        if not timed or not before:
            continue
        (w, actual_per_epoch), = timed
        epochs = trial.seconds / actual_per_epoch
        model = costs.fit(before).seconds_per_epoch(w) * epochs
        blind = float(np.median([s for _, s in before])) * epochs
        rows.append({"trial_id": trial.trial_id, "seconds": round(trial.seconds, 1), "cost_model": round(model, 1),
                     "cost_blind": round(blind, 1), "image_size": int(w.pixels ** 0.5), "macs": int(w.macs)})
    return {"run": str(run_path), "trials": len(rows), "rows": rows, **{
        f"{name}_{stat}": round(float(fn([abs(r[name] / r["seconds"] - 1) for r in rows])), 3) if rows else None
        for name in ("cost_model", "cost_blind") for stat, fn in (("median_error", np.median),
                                                                  ("p90_error", lambda e: np.percentile(e, 90)))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (RESULTS/EXPERIMENT/RUN_ID)")
    args = ap.parse_args()
    out = [replay(run) for run in args.runs]
    print("| run | trials predicted | cost model: median / p90 error | cost-blind: median / p90 error |")
    print("|---|---|---|---|")
    for r in out:
        print(f"| {r['run']} | {r['trials']} | {r['cost_model_median_error']} / {r['cost_model_p90_error']} | "
              f"{r['cost_blind_median_error']} / {r['cost_blind_p90_error']} |")
    pooled = [row for r in out for row in r["rows"]]
    summary = {f"{name}_median_error": round(float(np.median([abs(x[name] / x["seconds"] - 1) for x in pooled])), 3)
               if pooled else None for name in ("cost_model", "cost_blind")}
    print(json.dumps({"runs": out, "trials": len(pooled), **summary}))


if __name__ == "__main__":
    main()
