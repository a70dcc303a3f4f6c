"""Changes to the training recipe, side by side on one run's folds: the space's first warm-start network
against the same network with some of its values changed (normalization, width, learning rate, augmentation
strength, ...), each trained on every fold of RUN with the same seed, frames and batch size, as a trial
trains it. A variant trains its own `training.epochs` where it sets one; the others train --epochs, else the
warm start's own `training.epochs`, else the run's budget.epochs.

Each variant's out-of-fold probabilities are pooled over the folds and scored as the search scores a trial:
the objective (precision at the recall floor, the threshold kept by the run's recall-confidence rule over
sessions), PR-AUC, the plain rule's precision (out-of-fold recall >= floor), and the session that ranks worst
(its PR-AUC, and its recall at the variant's threshold: the session that sets it), and the frames it calls
positive by demo data's `kind` (which negatives fool it); with its training seconds and parameters. What a
search would gain from a change shows in the objective: a model whose scores shift between sessions forces
the session rule to a low threshold even when its pooled PR-AUC is high. The last
line is a JSON object: per variant its figures, per fold its PR-AUC, and each variant's differences from the
warm start and its time ratio. Development data only: choosing a recipe on held-out data spends it.

    python benchmarks/recipe.py --run results/dev-Y/magnification-seed21-n2000-128px/results/haadf/run \
        --variant group:blocks.normalization=group --variant layer:blocks.normalization=layer
    python benchmarks/recipe.py --run RUN --variant wide:blocks.filters=24,head.dense=32 --variant 48px:input.image_size=48 \
        --folds 0,1 --epochs 10
    python benchmarks/recipe.py --run RUN --variant session:training.class_weight=session

With `--average-last F`, each variant is also scored as `NAME+avg`: the same training's weights averaged over
the ends of its last F of epochs (stochastic weight averaging), batch-norm statistics re-estimated on one pass
over the training batches; the row costs no second training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # also quiets TensorFlow's start-up log
import numpy as np
import yaml
from sklearn.metrics import average_precision_score

BASE = "warm-start"
EXPERIMENT_KEYS = {"training.class_weight", "training.init_weights"}  # keys of the experiment file, not the space, that a variant may change


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, the changed values), each checked as a space file's constant
    (blocks.*, head.*, optimizer.*, input.image_size, augment.*, training.epochs: a variant's own length, its
    cosine schedule spanning it; the others train --epochs), or an experiment key (training.class_weight)."""
    from nas.errors import NasError
    from nas.space import check_value

    name, sep, body = text.partition(":")
    if not sep or not name or not body:
        raise SystemExit(f"--variant {text}: expected NAME:KEY=VALUE[,KEY=VALUE...], e.g. group:blocks.normalization=group")
    changes = {}
    for item in body.split(","):
        key, eq, raw = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text}: {item!r} is not KEY=VALUE")
        if key in EXPERIMENT_KEYS:
            changes[key] = yaml.safe_load(raw)  # checked with the run's experiment (variant_experiment)
            continue
        try:
            changes[key] = check_value(key, yaml.safe_load(raw), f"--variant {name}")
        except NasError as e:
            raise SystemExit(str(e)) from None
    return name, changes


def variant_experiment(exp, name: str, changes: dict):
    """The run's experiment with the variant's experiment keys (EXPERIMENT_KEYS) changed, checked as a file's."""
    from nas.config import build
    from nas.errors import NasError

    values = exp.values
    for key in EXPERIMENT_KEYS & set(changes):
        section, _, field = key.partition(".")
        values[section][field] = changes[key]
    try:
        return build(values, f"--variant {name}")
    except NasError as e:
        raise SystemExit(str(e)) from None


def space_changes(changes: dict) -> dict:
    return {k: v for k, v in changes.items() if k not in EXPERIMENT_KEYS}


def variant_epochs(base: dict, variants: dict[str, dict], asked: int, exp) -> tuple[int, dict[str, int]]:
    """Each variant's epochs a fold: its own training.epochs, else the warm start's length
    (common.warm_start_epochs). Also that default, the length of a variant that sets none."""
    default = common.warm_start_epochs(base, asked, exp)
    return default, {name: int(changes.get("training.epochs", default)) for name, changes in variants.items()}


def pooled_figures(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, objective, seed: int) -> dict:
    from nas.objective import precision_at_recall
    from nas.search.scoring import score

    s = score(y, prob, objective, seed=seed, params=0, latency_ms=0.0, groups=groups, interval=False)
    plain = precision_at_recall(y, prob, objective.recall_floor)
    return {"objective": round(s.objective, 4), "recall": round(s.recall, 4), "threshold": round(s.threshold, 4),
            "pr_auc": round(s.pr_auc, 4), "plain_precision": round(plain.precision, 4),
            "plain_threshold": round(float(plain.threshold), 4),
            **hardest_session(y, prob, groups, s.threshold)}


def hardest_session(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, threshold: float) -> dict:
    """The session (group) with the lowest PR-AUC among those with positives, its PR-AUC and its recall at the
    variant's threshold: under the session rule that session sets the threshold (on dev-W's magnification
    variant, chip00 at the lowest magnification: PR-AUC 0.68 against 0.83-0.93), so this row says whether a
    change helps where the objective is decided. Empty without groups."""
    groups = np.asarray(groups).astype(str)
    names = [g for g in np.unique(groups) if g and y[groups == g].any()]
    if not names:
        return {}
    auc = {g: float(average_precision_score(y[groups == g], prob[groups == g])) for g in names}
    worst = min(auc, key=auc.get)
    positives = (groups == worst) & (y == 1)
    return {"hardest_session": worst, "hardest_pr_auc": round(auc[worst], 4),
            "hardest_recall": round(float((prob[positives] >= threshold).mean()), 4)}


def _hardest(fig: dict) -> str:
    return f"{fig['hardest_session']}: {fig['hardest_pr_auc']:.4f}" if "hardest_session" in fig else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a cross-validated run folder (results/<experiment>/<run-id>)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="a change to the warm-start network's values (repeatable)")
    ap.add_argument("--folds", default="", help="comma-separated fold indices (default: every fold)")
    ap.add_argument("--epochs", type=int, default=0, help="epochs per fold of every variant that does not set its own "
                    "training.epochs (default: the warm start's training.epochs, else the run's budget.epochs)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--average-last", type=float, default=0.0, metavar="F",
                    help="also score each variant's weights averaged over its last F of epochs (0 < F <= 1; default off)")
    args = ap.parse_args()
    if not args.variant:
        raise SystemExit("--variant: name at least one change to compare with the warm start")
    if not 0.0 <= args.average_last <= 1.0:
        raise SystemExit(f"--average-last {args.average_last}: expected a fraction of the epochs in (0, 1]")

    from nas.errors import NasError
    from nas.prepare import reopen_frames
    from nas.reopen import reopen
    from nas.space import trial_values

    opened = reopen(args.run)
    exp = opened.exp
    if not opened.space.warm_start:
        raise SystemExit(f"{opened.run.space}: this benchmark trains the space's first warm_start; it has none")
    base = trial_values(opened.space, opened.space.warm_start[0])  # every searched key set
    variants = {BASE: {}} | dict(parse_variant(v) for v in args.variant)
    if len(variants) != len(args.variant) + 1:
        raise SystemExit(f"--variant: names must differ from each other and from {BASE}")
    exp_of = {name: variant_experiment(exp, name, changes) for name, changes in variants.items()}
    size_of = {name: int((base | changes).get("input.image_size", exp.data.image_size)) for name, changes in variants.items()}
    frames = reopen_frames(opened.run, exp.data, opened.run.cache_root, sizes=sorted(set(size_of.values())))
    plans = common.chosen_plans(frames, args.folds, args.run)
    policy = common.run_policy(opened)
    epochs, epochs_of = variant_epochs(base, variants, args.epochs, exp)
    average_from = ({name: n - max(1, round(args.average_last * n)) for name, n in epochs_of.items()}
                    if args.average_last else None)
    scored = [(name, name) for name in variants]  # (label, variant) of each scored row: a variant, then its average
    if args.average_last:
        scored = [row for name in variants for row in ((name, name), (f"{name}+avg", name))]
    rows, probs, seconds = [], {label: [] for label, _ in scored}, {}
    for plan in plans:
        y = frames.labels[plan.val_rows]
        for name, changes in variants.items():
            try:
                fit = common.train_fold(frames, plan, base | space_changes(changes), size_of[name], exp_of[name],
                                        epochs_of[name], args.seed, policy, average_from and average_from[name])
            except NasError as e:
                raise SystemExit(str(e)) from None
            for label, prob in ((name, fit["prob"]), (f"{name}+avg", fit.get("prob_avg"))):
                if prob is None:
                    continue
                probs[label].append(prob)
                pr_auc = float(average_precision_score(y, prob))
                rows.append({"fold": plan.index, "variant": label, "pr_auc": round(pr_auc, 4),
                             "seconds": round(fit["seconds"], 2), "params": fit["params"]})
                seconds.setdefault(label, []).append(fit["seconds"])
                print(f"fold {plan.index}  {label:12s} PR-AUC {pr_auc:.4f}  {fit['seconds']:.1f} s  {fit['params']} parameters",
                      flush=True)
    val_rows = np.concatenate([p.val_rows for p in plans])
    y, groups = frames.labels[val_rows], frames.groups[val_rows]
    kinds = common.frame_kinds(frames.cached.records, Path(exp.data.path))[val_rows]
    summary = {"run": str(args.run), "epochs": epochs, "folds": [p.index for p in plans], "seed": args.seed, "policy": policy,
               "recall_floor": exp.objective.recall_floor, "recall_confidence": exp.objective.recall_confidence,
               "average_from_epoch": average_from, "variants": {}, "rows": rows}
    for label, name in scored:
        prob = np.concatenate(probs[label])
        fig = pooled_figures(y, prob, groups, exp.objective, args.seed)  # as the search does
        fig["called_by_kind"] = common.called_by_kind(y, kinds, prob >= fig["threshold"])
        fig["called_by_kind_plain"] = common.called_by_kind(y, kinds, prob >= fig["plain_threshold"])
        summary["variants"][label] = {"changes": variants[name], "size": size_of[name], "epochs": epochs_of[name], **fig,
                                      "averaged": label != name,
                                      "seconds": round(float(np.mean(seconds[label])), 2),
                                      "params": next(r["params"] for r in rows if r["variant"] == label)}
    print(f"\n| variant | objective (out of fold) | recall | PR-AUC | precision, plain rule | hardest session: PR-AUC | s a fold | vs {BASE} |")
    print("|---|---|---|---|---|---|---|---|")
    ref = summary["variants"][BASE]
    for name, fig in summary["variants"].items():
        if name != BASE:
            fig["minus_base"] = {k: round(fig[k] - ref[k], 4) for k in ("objective", "pr_auc", "plain_precision")}
            fig["time_ratio"] = round(float(np.mean(seconds[name]) / np.mean(seconds[BASE])), 3)
        diff = (f"objective {fig['minus_base']['objective']:+.4f}, PR-AUC {fig['minus_base']['pr_auc']:+.4f}, "
                f"{fig['time_ratio']:.2f}x time") if name != BASE else ""
        print(f"| {name} | {fig['objective']:.4f} | {fig['recall']:.3f} | {fig['pr_auc']:.4f} | "
              f"{fig['plain_precision']:.4f} | {_hardest(fig)} | {fig['seconds']:.1f} | {diff} |")
    print_negatives_called(summary["variants"])
    print(json.dumps(summary))


def print_negatives_called(variants: dict) -> None:
    """Which kinds of negative each variant calls positive out of fold (demo data's `kind`; nothing for frames
    without one), at its own threshold and at the plain rule's (pooled recall at the floor, so that variants
    compare at the same recall: on dev-W a variant whose hardest session forced a low threshold called 130 of
    223 empty frames at its own and looked worse at every kind for that alone)."""
    for key, where in (("called_by_kind", "at its threshold"), ("called_by_kind_plain", "at the plain rule's threshold")):
        kinds = sorted({k for fig in variants.values() for k in fig.get(key, {}) if k.endswith("(negative)")})
        if not kinds:
            continue
        print(f"\n| negatives called positive, out of fold, {where} | "
              f"{' | '.join(k.removesuffix(' (negative)') for k in kinds)} |")
        print("|---|" + "---|" * len(kinds))
        for name, fig in variants.items():
            cells = [fig.get(key, {}).get(k) for k in kinds]
            print(f"| {name} | " + " | ".join(f"{c['called']}/{c['frames']}" if c else "-" for c in cells) + " |")


if __name__ == "__main__":  # the frame cache decodes in worker processes (forkserver): guard the entry point
    main()
