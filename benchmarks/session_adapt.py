"""Adapting to a new session without labels, measured: the exported trial's fold models predict as shipped, or
with their batch-norm statistics re-estimated on each session's own frames (AdaBN: Li et al., "Revisiting
batch normalization for practical domain adaptation", 2016). Sessions differ in dose, gain and magnification,
and a network's batch-norm statistics are the training sessions'; a session's own frames, unlabelled, could
replace them before its frames are classified.

Per variant: the out-of-fold figures (each fold's held-out frames, sessions adapted one by one) with the
threshold the run's rule picks on them (recall floor, recall confidence over sessions), and the test split at
that threshold (the fold models averaged, as the export ships them; each test session adapted on its own
frames). It needs an exported run (`nas export` has read the test split once; this re-scores it, choosing
nothing) and measures development data only. The last line is a JSON object.

    python benchmarks/session_adapt.py results/dev-Y/magnification-seed21-n2000-128px/results/haadf/run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # also quiets TensorFlow's start-up log
import numpy as np
from sklearn.metrics import average_precision_score


def adapted(model, x: np.ndarray, tta: bool) -> np.ndarray:
    """Probabilities of one session's frames (n, S, S, 1) with batch norm using the statistics of these frames
    (with test-time augmentation, each of the 8 flips and turns normalized by its own statistics, and the 8
    averaged); dropout stays off and the model is left as it was. Our CNN families only: in training mode an
    AutoKeras graph would also run its augmentation layers."""
    import keras

    from nas.augment import dihedral_views
    from nas.models import all_layers

    dropouts = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.Dropout)]  # spatial ones too
    rates = [layer.rate for layer in dropouts]
    saved = model.get_weights()  # a training-mode call also moves the running statistics: put them back after
    try:
        for layer in dropouts:
            layer.rate = 0.0
        views = dihedral_views(x).reshape(8, *x.shape) if tta else x[None]
        return np.mean([np.asarray(model(v, training=True)).reshape(-1) for v in views], axis=0)
    finally:
        for layer, rate in zip(dropouts, rates, strict=True):
            layer.rate = rate
        model.set_weights(saved)


def by_session(model, store, rows: np.ndarray, groups: np.ndarray, tta: bool) -> np.ndarray:
    prob = np.zeros(len(rows))
    for session in np.unique(groups):
        at = np.flatnonzero(groups == session)
        prob[at] = adapted(model, store[rows[at]][..., None], tta)
    return prob


def measure(run: Path) -> dict:
    from nas import training
    from nas.export import members as members_mod
    from nas.objective import classification_report, precision_at_recall
    from nas.reopen import reopen

    card_path = run / "export" / "model_card.json"
    if not card_path.is_file():
        raise SystemExit(f"{run}: no export/model_card.json; run `nas export {run}` first")
    card = json.loads(card_path.read_text())
    if card.get("refit") or card.get("ensemble"):
        raise SystemExit(f"{card_path}: a refit or ensemble export; this compares a trial's fold models as a plain "
                         "`nas export RUN` ships them")
    opened = reopen(run)
    exp = opened.exp
    if exp.search.tuner == "autokeras":
        raise SystemExit(f"{run}: an AutoKeras run; its graphs augment frames in training mode, so batch-norm "
                         "statistics cannot be re-estimated by a training-mode call")
    chosen = members_mod.choose(opened.run, str(card["trial_id"]), 1)
    size = members_mod.image_size(opened, chosen)
    frames = opened.frames(all_sizes=True)
    if not frames.cv:
        raise SystemExit(f"{run}: not a cross-validated run (objective.folds >= 2)")
    if (frames.groups == "").any():
        raise SystemExit(f"{run}: frames without a session (group); adaptation is per session")
    _, per_member = members_mod.network(opened, chosen, size)
    fold_models = per_member[0]
    store, labels, tta = frames.stores[size], frames.labels, bool(exp.augment.tta)
    test = frames.rows("test")
    oof = {"shipped": [], "adapted": []}
    on_test = {"shipped": [], "adapted": []}
    plans = frames.plans()
    for plan, model in zip(plans, fold_models, strict=True):
        groups = frames.groups[plan.val_rows]
        oof["shipped"].append(training.predict_rows(model, store, plan.val_rows, tta=tta))
        oof["adapted"].append(by_session(model, store, plan.val_rows, groups, tta))
        on_test["shipped"].append(training.predict_rows(model, store, test, tta=tta))
        on_test["adapted"].append(by_session(model, store, test, frames.groups[test], tta))
    val_rows = np.concatenate([p.val_rows for p in plans])
    y, groups, ty = labels[val_rows], frames.groups[val_rows], labels[test]
    obj = exp.objective
    out = {"run": str(run), "trial_id": card["trial_id"], "recall_floor": obj.recall_floor,
           "recall_confidence": obj.recall_confidence, "test_sessions": len(set(frames.groups[test].tolist())),
           "card_test_precision": card["metrics"]["test"]["precision"], "variants": {}}
    for name in oof:
        prob, tprob = np.concatenate(oof[name]), np.mean(on_test[name], axis=0)
        op = precision_at_recall(y, prob, obj.recall_floor, obj.recall_confidence, groups)
        test_figures = classification_report(ty, tprob, op.threshold, obj.recall_floor)  # as the export reports them
        out["variants"][name] = {
            "oof_objective": round(op.precision, 4), "oof_pr_auc": round(float(average_precision_score(y, prob)), 4),
            "threshold": round(op.threshold, 4),
            **{f"test_{k}": round(test_figures[k], 4) for k in ("precision", "recall", "pr_auc")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="exported cross-validated run folders")
    args = ap.parse_args()
    results = []
    print("| run | variant | objective (out of fold) | PR-AUC (out of fold) | test precision | test recall | test PR-AUC |")
    print("|---|---|---|---|---|---|---|")
    for run, res in common.each_run(args.runs, measure):
        results.append(res)
        for name, f in res["variants"].items():
            print(f"| {run} | {name} | {f['oof_objective']:.4f} | {f['oof_pr_auc']:.4f} | {f['test_precision']:.3f} | "
                  f"{f['test_recall']:.3f} | {f['test_pr_auc']:.4f} |", flush=True)
    print(json.dumps({"runs": results}))


if __name__ == "__main__":  # the frame cache decodes in worker processes (forkserver): guard the entry point
    main()
