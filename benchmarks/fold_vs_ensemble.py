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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path, help="labelled frames of new sessions (labels.csv with a group column)")
    args = ap.parse_args()

    from thresholds import oof_frames  # beside this script

    from nas import training
    from nas.export import members as members_mod
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
    print(f"threshold {threshold:.4f} (card), floor {floor:g}; {len(y)} frames, {int(y.sum())} positives, "
          f"{len(np.unique(groups))} sessions\n")
    print("| model | recall | precision | sessions keeping the floor | worst session's recall | precision at the floor, threshold chosen on them | PR-AUC |")
    print("|---|---|---|---|---|---|---|")
    for name, f in result.items():
        kept = f"{f['sessions_keeping_floor'][0]} of {f['sessions_keeping_floor'][1]}"
        print(f"| {name} | {f['recall']:.3f} | {f['precision']:.3f} | {kept} | {f['worst_session_recall']:.3f} | "
              f"{f['precision_at_floor_chosen_on_them']:.3f} | {f['pr_auc']:.3f} |")
    print(json.dumps({"run": str(args.run), "data": str(args.data), "trial_id": card["trial_id"], "threshold": threshold,
                      "recall_floor": floor, "models": result}))


if __name__ == "__main__":
    main()
