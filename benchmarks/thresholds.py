"""Threshold rules re-scored on exported runs, without training: each rule picks its threshold on the exported
trial's out-of-fold probabilities (as `nas export` does), and the test split's probabilities, already in the
export's test_predictions.csv, give the test precision and recall at that threshold.

Rules: `plain` (the out-of-fold recall itself reaches the floor), `frames:C` (Wilson's one-sided bound on the
frames' recall at confidence C), `sessions:C` (a new session's recall, at confidence C; the rule
`objective.recall_confidence = C` applies when the frames carry three or more sessions). The last line is a
JSON object: per run and rule, the threshold and the test precision and recall.

    python benchmarks/thresholds.py results/dev-Y/base-seed20-n2000-128px/results/haadf/run ...
    python benchmarks/thresholds.py --rules plain,sessions:0.7,sessions:0.8,sessions:0.9 RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

DEFAULT_RULES = "plain,frames:0.9,sessions:0.7,sessions:0.8,sessions:0.9"


def oof_frames(run: Path, trial_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, sessions and probabilities of a trial's out-of-fold frames, in the order the trial stored them
    (fold by fold, rows in split.csv order)."""
    rows = _oof_rows(run)
    prob = np.load(run / "trials" / trial_id / "oof_probs.npy")
    if len(prob) != len(rows):
        raise SystemExit(f"{run}: trial {trial_id} stored {len(prob)} out-of-fold probabilities for {len(rows)} frames")
    labels = np.array([r["label"] == "positive" for r in rows], int)
    return labels, np.array([r.get("group", "") for r in rows]), prob


def oof_folds(run: Path) -> np.ndarray:
    """Each out-of-fold frame's fold, in the order oof_frames returns the frames."""
    return np.array([int(r["fold"]) for r in _oof_rows(run)])


def _oof_rows(run: Path) -> list[dict]:
    """split.csv's cross-validated rows, fold by fold (split.csv order within a fold): the order trials store
    their out-of-fold probabilities in."""
    rows = [r for r in csv.DictReader(open(run / "split.csv")) if r.get("fold")]
    if not rows:
        raise SystemExit(f"{run / 'split.csv'}: no folds; this script re-scores cross-validated runs")
    return sorted(rows, key=lambda r: int(r["fold"]))


def test_frames(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(open(run / "export" / "test_predictions.csv")))
    return (np.array([r["label"] in ("1", "positive") for r in rows], int),
            np.array([float(r["probability"]) for r in rows]))


def rescore(run: Path, rules: list[str]) -> dict:
    from nas.objective import classification_report, precision_at_recall

    card = json.loads((run / "export" / "model_card.json").read_text())
    floor = card["recall_floor"]
    y, groups, prob = oof_frames(run, str(card["trial_id"]))
    ty, tprob = test_frames(run)
    out = {"trial_id": card["trial_id"], "card_threshold": card["threshold"], "recall_floor": floor, "rules": {}}
    for rule in rules:
        kind, _, conf = rule.partition(":")
        if kind not in ("plain", "frames", "sessions") or (kind != "plain") != bool(conf):
            raise SystemExit(f"--rules {rule}: expected plain, frames:C or sessions:C (C a confidence in (0, 1))")
        op = precision_at_recall(y, prob, floor, float(conf or 0), groups if kind == "sessions" else None)
        test = classification_report(ty, tprob, op.threshold, floor)  # as the export reports the test split
        out["rules"][rule] = {"threshold": op.threshold, "test_precision": test["precision"],
                              "test_recall": test["recall"], "note": op.note}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="exported cross-validated run folders")
    ap.add_argument("--rules", default=DEFAULT_RULES, help=f"comma-separated (default {DEFAULT_RULES})")
    args = ap.parse_args()
    rules = args.rules.split(",")
    results = {}
    print("| run | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    for run in args.runs:
        if not (run / "export" / "model_card.json").is_file():
            raise SystemExit(f"{run}: no export/model_card.json; run `nas export {run}` first")
        res = results[str(run)] = rescore(run, rules)
        cells = [f"{r['test_precision']:.3f} / {r['test_recall']:.3f}" for r in res["rules"].values()]
        print(f"| {run} | " + " | ".join(cells) + " |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
