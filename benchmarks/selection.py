"""Does the search's objective choose what does best on new frames? For every trial of a run that finished
every fold: its out-of-fold objective (what the search ranks by), its out-of-fold PR-AUC (the tie-break, and
a rank-only alternative), and its test precision and recall at the threshold the run's rule picks on its own
out-of-fold probabilities (the trial exported as `nas export RUN --trial ID` would ship it, fold models
averaged). Printed with Spearman's rank correlation of each criterion with test precision, and the test
precision of the trial each criterion would have chosen.

It reads the test split for every trial: run it on development data only, never to choose on held-out data.
Best on a run searched without racing (`objective.racing = false`), where every trial finished its folds.
The last line is a JSON object.

    python benchmarks/selection.py results/dev-Ynorace/magnification-seed21-n2000-128px/results/haadf/run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # also quiets TensorFlow's start-up log
import numpy as np
from scipy.stats import spearmanr


def per_trial(run_path: Path) -> list[dict]:
    from nas import training
    from nas.export import members
    from nas.objective import classification_report, precision_at_recall
    from nas.reopen import reopen
    from nas.runlog import read_trials

    opened = reopen(run_path)
    exp = opened.exp
    if exp.objective.folds < 2:
        raise SystemExit(f"{run_path}: not a cross-validated run (objective.folds >= 2)")
    frames = opened.frames(all_sizes=True)
    test, rows = frames.rows("test"), frames.validation_rows()
    ty, y, groups = frames.labels[test], frames.labels[rows], frames.groups[rows]
    out = []
    for tid, rec in sorted(read_trials(opened.run.trials_log).items()):
        if not rec.complete:
            continue
        chosen = members.choose(opened.run, tid, 1)
        size = members.image_size(opened, chosen)
        net, _ = members.network(opened, chosen, size)
        oof = np.load(opened.run.trial_dir(tid) / "oof_probs.npy")
        op = precision_at_recall(y, oof, exp.objective.recall_floor, exp.objective.recall_confidence, groups)
        prob = training.predict_rows(net, frames.stores[size], test, tta=bool(exp.augment.tta))
        test_figures = classification_report(ty, prob, op.threshold, exp.objective.recall_floor)  # as the card's
        out.append({"trial_id": tid, "size": size, "objective": round(float(rec.objective), 4),
                    "pr_auc": round(float(rec.pr_auc), 4),  # of the same out-of-fold probabilities
                    **{f"test_{k}": round(test_figures[k], 4) for k in ("precision", "recall", "pr_auc")}})
    if len(out) < 2:
        raise SystemExit(f"{run_path}: {len(out)} trial(s) finished every fold; a comparison needs two or more "
                         "(search with objective.racing = false)")
    return out


def judge(rows: list[dict]) -> dict:
    """Per criterion: its rank correlation with test precision and the test precision of the trial it picks."""
    test = [r["test_precision"] for r in rows]
    verdict = {"best_test_precision": max(test)}
    for key in ("objective", "pr_auc"):
        values = [r[key] for r in rows]
        rho = spearmanr(values, test).statistic
        pick = rows[int(np.argmax(values))]
        verdict[key] = {"spearman": None if np.isnan(rho) else round(float(rho), 3), "picks": pick["trial_id"],
                        "its_test_precision": pick["test_precision"]}
    return verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="cross-validated runs (development data)")
    args = ap.parse_args()
    results = []
    for run, rows in common.each_run(args.runs, per_trial):
        verdict = judge(rows)
        results.append({"run": str(run), "trials": rows, **verdict})
        print(f"\n{run}\n\n| trial | px | out-of-fold objective | out-of-fold PR-AUC | test precision | test recall | test PR-AUC |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['trial_id']} | {r['size']} | {r['objective']:.3f} | {r['pr_auc']:.3f} | {r['test_precision']:.3f} | "
                  f"{r['test_recall']:.3f} | {r['test_pr_auc']:.3f} |")
        for key in ("objective", "pr_auc"):
            v = verdict[key]
            print(f"by {key}: Spearman {v['spearman']} with test precision; picks {v['picks']} "
                  f"(test precision {v['its_test_precision']:.3f}; best of the run {verdict['best_test_precision']:.3f})")
    print(json.dumps({"runs": results}))


if __name__ == "__main__":  # the frame cache decodes in worker processes (forkserver): guard the entry point
    main()
