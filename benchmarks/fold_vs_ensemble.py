"""Why a cross-validated export keeps more recall on new sessions than its threshold rule promised: each fold
model alone against their average (what `nas export` ships), at the exported threshold, on labelled frames of
new sessions. The threshold is chosen on out-of-fold probabilities, which come from one fold model per frame;
if the average ranks a new session's positives higher than any one fold model does, the exported threshold
keeps more recall on new sessions than it kept out of fold, and so costs precision that the promise did not need.

    python benchmarks/fold_vs_ensemble.py RUN NEW_SESSIONS_DIR

RUN is an exported cross-validated run; NEW_SESSIONS_DIR a labelled folder (labels.csv with path, label,
group), e.g. the new sessions `benchmarks/generalization.py` draws. Prints a Markdown table (per model:
pooled recall and precision at the exported threshold, sessions keeping the floor, worst session's recall,
the precision at the floor had the threshold been chosen on these frames) and, last, a JSON line.

Two more rows ask whether the fold models' own score scales cost the threshold anything: each fold model
Platt-scaled on its own out-of-fold frames (a slope and an intercept on its logits), the pooled out-of-fold
frames rescored so, the threshold chosen again by the run's rule, and the average of the rescaled models on the
new sessions at that threshold. Pooling three models' probabilities mixes three scales; if the threshold were set
by that mixing rather than by the sessions, the rescaled rows would keep less surplus recall.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def new_session_frames(opened, data: Path, size: int):
    """The folder's frames through the project's own scan and cache (any instrument format, the experiment's
    clip, signal and pixel size, decoded once into the run's cache; read a batch at a time), their labels and
    sessions."""
    from nas.cache import build_cache
    from nas.data import scan

    d = opened.exp.data
    cached = build_cache(scan(data, d.positive, d.negative), data, opened.run.cache_root, size,
                         tuple(d.clip_percentiles), signal=d.signal, pixel_size_nm=d.pixel_size_nm)
    return cached.frames, cached.labels.astype(int), np.array([r.group for r in cached.records])


def figures(y: np.ndarray, groups: np.ndarray, prob: np.ndarray, threshold: float, floor: float) -> dict:
    from nas.objective import classification_report

    rep = classification_report(y, prob, threshold, floor)
    called = prob >= threshold
    recalls = [float(called[(groups == g) & (y == 1)].mean()) for g in np.unique(groups) if y[groups == g].any()]
    return {"recall": round(rep["recall"], 4), "precision": round(rep["precision"], 4),
            "sessions_keeping_floor": [sum(r >= floor for r in recalls), len(recalls)],
            "worst_session_recall": round(min(recalls), 4), "precision_at_floor_chosen_on_them": round(rep["precision_at_floor"], 4),
            "pr_auc": round(rep["pr_auc"], 4)}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def platt(y: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic fit of the labels on the logits (Platt scaling), unregularised; a
    fold with one class only cannot be fitted and keeps its scale (1, 0)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit(prob)[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def rescaled(prob: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(slope * logit(prob) + intercept)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path, help="labelled frames of new sessions (labels.csv with a group column)")
    args = ap.parse_args()

    from thresholds import oof_folds, oof_frames  # beside this script

    from nas import training
    from nas.export import members as members_mod
    from nas.objective import precision_at_recall
    from nas.reopen import reopen

    card = json.loads((args.run / "export" / "model_card.json").read_text())
    opened = reopen(args.run)
    chosen = members_mod.choose(opened.run, str(card["trial_id"]), 1)
    size = members_mod.image_size(opened, chosen)
    ensemble, per_member = members_mod.network(opened, chosen, size)
    folds = per_member[0]
    if len(folds) < 2:
        raise SystemExit(f"{args.run}: trial {card['trial_id']} has one model; this compares fold models with their average")
    x, y, groups = new_session_frames(opened, args.data, size)
    rows, tta = np.arange(len(y)), opened.exp.augment.tta
    threshold, floor = float(card["threshold"]), float(card["recall_floor"])
    probs = {f"fold {k} alone": training.predict_rows(m, x, rows, tta=tta) for k, m in enumerate(folds)}
    probs["fold average (the export)"] = training.predict_rows(ensemble, x, rows, tta=tta)
    result = {name: figures(y, groups, p, threshold, floor) for name, p in probs.items()}
    oy, ogroups, oprob = oof_frames(args.run, str(card["trial_id"]))  # what the threshold was chosen on
    result = {"out of fold (where the threshold was chosen)": figures(oy, ogroups, oprob, threshold, floor), **result}
    # each fold model on a common scale: Platt on its own out-of-fold frames, the threshold chosen again
    fold_of, ob = oof_folds(args.run), opened.exp.objective
    scales = [platt(oy[fold_of == k], oprob[fold_of == k]) for k in range(len(folds))]
    oscaled = np.concatenate([rescaled(oprob[fold_of == k], *scales[k]) for k in range(len(folds))])
    again = precision_at_recall(oy, oscaled, floor, ob.recall_confidence, groups=ogroups)
    members = [rescaled(probs[f"fold {k} alone"], *scales[k]) for k in range(len(folds))]
    result["out of fold, each fold model Platt-scaled"] = figures(oy, ogroups, oscaled, again.threshold, floor)
    result["average of the Platt-scaled fold models, new sessions"] = figures(y, groups, np.mean(members, axis=0),
                                                                             again.threshold, floor)
    print(f"threshold {threshold:.4f} (card), floor {floor:g}; {len(y)} frames, {int(y.sum())} positives, "
          f"{len(np.unique(groups))} sessions\n")
    print("| model | recall | precision | sessions keeping the floor | worst session's recall | precision at the floor, threshold chosen on them | PR-AUC |")
    print("|---|---|---|---|---|---|---|")
    for name, f in result.items():
        kept = f"{f['sessions_keeping_floor'][0]} of {f['sessions_keeping_floor'][1]}"
        print(f"| {name} | {f['recall']:.3f} | {f['precision']:.3f} | {kept} | {f['worst_session_recall']:.3f} | "
              f"{f['precision_at_floor_chosen_on_them']:.3f} | {f['pr_auc']:.3f} |")
    print(f"\nPlatt-scaled: threshold {again.threshold:.4f} chosen again by the run's rule; (slope, intercept) by fold: "
          + ", ".join(f"({a:.3f}, {b:+.3f})" for a, b in scales))
    print(json.dumps({"run": str(args.run), "data": str(args.data), "trial_id": card["trial_id"], "threshold": threshold,
                      "recall_floor": floor, "models": result, "platt": {"threshold": again.threshold, "by_fold": scales}}))


if __name__ == "__main__":
    main()
