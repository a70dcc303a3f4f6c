"""Input detail against its cost, side by side on one run's folds: the space's first warm-start network fed
frames resized to S px (how the recommended space reads them) or read at k*S px and folded into the same S px
network (stem.space_to_depth k, every pixel kept).

Per fold of RUN (a cross-validated run, e.g. one benchmarks/generalization.py left), each variant trains on the
fold's training frames with the run's augmentation, batch size and epochs (one seed for both), and is scored on
the fold's held-out frames: PR-AUC and the precision at the run's recall floor (the plain rule: highest
precision with recall >= floor on those frames), with its training seconds. The last line is a JSON object:
per variant the means, and the folded variant's differences and time ratio against the resized one.

    python benchmarks/detail.py --run results/dev-Y/magnification-seed21-n2000-128px/results/haadf/run
    python benchmarks/detail.py --run RUN --size 48 --fold-by 2 --folds 0,1 --epochs 10
"""

from __future__ import annotations

import argparse
import json

import common  # also quiets TensorFlow's start-up log
import numpy as np
from sklearn.metrics import average_precision_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a cross-validated run folder (results/<experiment>/<run-id>)")
    ap.add_argument("--size", type=int, default=64, help="the network's input size in px (default 64)")
    ap.add_argument("--fold-by", type=int, default=2, help="k: the folded variant reads k*size px (default 2)")
    ap.add_argument("--folds", default="", help="comma-separated fold indices (default: every fold)")
    ap.add_argument("--epochs", type=int, default=0, help="epochs per fold (default: the warm start's training.epochs, "
                    "else the run's budget.epochs)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from nas.errors import NasError
    from nas.prepare import reopen_frames
    from nas.reopen import reopen
    from nas.space import trial_values

    opened = reopen(args.run)
    exp = opened.exp
    if not opened.space.warm_start:
        raise SystemExit(f"{opened.run.space}: this benchmark trains the space's first warm_start; it has none")
    big = args.size * args.fold_by
    frames = reopen_frames(opened.run, exp.data, opened.run.cache_root, sizes=[args.size, big])
    plans = common.chosen_plans(frames, args.folds, args.run)
    values = trial_values(opened.space, opened.space.warm_start[0])  # every searched key set
    epochs = common.warm_start_epochs(values, args.epochs, exp)
    policy = common.run_policy(opened)
    variants = {"resized": (args.size, 1), "folded": (big, args.fold_by)}
    rows = []
    for plan in plans:
        for name, (read, k) in variants.items():
            try:
                fig = _train_and_score(frames, plan, {**values, "stem.space_to_depth": k}, read, exp, epochs, args.seed,
                                       policy)
            except NasError as e:
                raise SystemExit(str(e)) from None
            rows.append({"fold": plan.index, "variant": name, "read_px": read, **fig})
            print(f"fold {plan.index}  {name:8s} read {read:4d} px  PR-AUC {fig['pr_auc']:.4f}  precision at recall "
                  f"{exp.objective.recall_floor:g} {fig['precision_at_floor']:.4f}  {fig['seconds']:.1f} s", flush=True)
    summary = {"run": str(args.run), "size": args.size, "fold_by": args.fold_by, "epochs": epochs, "rows": rows}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        summary[name] = {k: round(float(np.mean([r[k] for r in mine])), 4) for k in ("pr_auc", "precision_at_floor", "seconds")}
    summary["folded_minus_resized"] = {k: round(summary["folded"][k] - summary["resized"][k], 4)
                                       for k in ("pr_auc", "precision_at_floor")}
    summary["folded_time_ratio"] = round(summary["folded"]["seconds"] / summary["resized"]["seconds"], 3)
    print(json.dumps(summary))


def _train_and_score(frames, plan, values: dict, read: int, exp, epochs: int, seed: int, policy: str) -> dict:
    from nas.objective import precision_at_recall

    fit = common.train_fold(frames, plan, values, read, exp, epochs, seed, policy)
    y = frames.labels[plan.val_rows]
    return {"pr_auc": float(average_precision_score(y, fit["prob"])),
            "precision_at_floor": precision_at_recall(y, fit["prob"], exp.objective.recall_floor).precision,
            "seconds": round(fit["seconds"], 2), "params": fit["params"]}


if __name__ == "__main__":  # the frame cache decodes in worker processes (forkserver): guard the entry point
    main()
