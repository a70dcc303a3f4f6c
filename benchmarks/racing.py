"""Does racing stop trials that would have won? Replays racing on a run searched without it
(`objective.racing = false`, every trial trained on every fold): trial by trial, in the order they finished,
racing's own decision after the first fold (nas.search.racing.race, against the incumbent of that moment:
the best trial finished before it), next to the trial's full out-of-fold objective and whether it beat that
incumbent. No training: the run's stored probabilities are enough.

A trial racing would stop that ends above the incumbent is a **false stop** (racing would have lost the
winner); a trial it lets go on that ends below is a fold spent. The last line is a JSON object.

    python benchmarks/generalization.py --out results/dev-Ynorace --families magnification --set objective.racing=false
    python benchmarks/racing.py results/dev-Ynorace/magnification-seed21-n2000-128px/results/haadf/run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # also quiets TensorFlow's start-up log
import numpy as np


def replay(run_path: Path) -> dict:
    from nas.reopen import reopen
    from nas.runlog import read_trials
    from nas.search.racing import race
    from nas.trial import rank_key

    opened = reopen(run_path)
    exp = opened.exp
    if exp.objective.folds < 2 or exp.objective.racing:
        raise SystemExit(f"{run_path}: replaying racing needs a cross-validated run searched without it "
                         "(objective.folds >= 2, objective.racing = false)")
    trials = read_trials(opened.run.trials_log)
    total = exp.objective.folds
    done = sorted((t for t in trials.values() if t.complete and t.folds_total == total and t.time is not None),
                  key=lambda t: t.time)
    frames = opened.frames()
    rows = []
    for i, cand in enumerate(done):
        before = {t.trial_id: t for t in done[:i]}
        first = np.load(opened.run.trial_dir(cand.trial_id) / "fold-0" / "val_probs.npy")
        why = race(opened.run, before, frames, [first], exp.objective, seed=exp.search.seed)  # "": no incumbent yet
        leader = min(before.values(), key=rank_key) if before else None
        beat = leader is None or rank_key(cand) < rank_key(leader)
        rows.append({"trial_id": cand.trial_id, "objective": round(float(cand.objective), 4),
                     "incumbent": leader.trial_id if leader else None,
                     "incumbent_objective": round(float(leader.objective), 4) if leader else None,
                     "raced_out": bool(why), "beat_incumbent": bool(beat), "why": why})
    raced = [r for r in rows if r["incumbent"] is not None]
    return {"run": str(run_path), "trials": len(rows), "rows": rows,
            "stopped": sum(r["raced_out"] for r in raced),
            "false_stops": sum(r["raced_out"] and r["beat_incumbent"] for r in raced),
            "went_on_and_lost": sum(not r["raced_out"] and not r["beat_incumbent"] for r in raced),
            "went_on_and_won": sum(not r["raced_out"] and r["beat_incumbent"] for r in raced)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="cross-validated runs searched with objective.racing = false")
    args = ap.parse_args()
    results = []
    print("| run | trial | out-of-fold objective | incumbent (objective) | racing after fold 0 | beat it |")
    print("|---|---|---|---|---|---|")
    for run, res in common.each_run(args.runs, replay):
        results.append(res)
        for r in res["rows"]:
            inc = f"{r['incumbent']} ({r['incumbent_objective']:.3f})" if r["incumbent"] else "none (first)"
            print(f"| {run} | {r['trial_id']} | {r['objective']:.3f} | {inc} | "
                  f"{'stop' if r['raced_out'] else 'go on'} | {'yes' if r['beat_incumbent'] else 'no'} |")
        print(f"\n{run}: racing would stop {res['stopped']} of {res['trials'] - 1} challengers, "
              f"{res['false_stops']} of them winners; it would let {res['went_on_and_lost']} go on that lost")
    print(json.dumps({"runs": results}))


if __name__ == "__main__":  # the frame cache decodes in worker processes (forkserver): guard the entry point
    main()
