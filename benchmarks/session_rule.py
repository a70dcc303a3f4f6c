"""How often a new session keeps the recall floor at the threshold each rule picks, where the truth is known:
simulated sessions whose positives score N(mu_s, 1), mu_s ~ N(2.5, 0.5) per session; 7 sessions seen with 15-60
positives each (as the families' out-of-fold sessions); the highest threshold whose bound reaches the floor;
then 20 new sessions drawn alike, per replication. The session rule promises 90% at confidence 0.9.

    python benchmarks/session_rule.py [--reps 60] [--seed 3]

Prints one line per rule and, last, a JSON object: per rule, the share of new sessions keeping the floor.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

RULES = ("sessions:0.9", "sessions:0.75", "sessions:0.97", "frames:0.9")
FLOOR, SEEN, NEW, MU, SPREAD, POSITIVES = 0.9, 7, 20, 2.5, 0.5, (15, 61)


def coverage(rule: str, reps: int = 60, seed: int = 3) -> float:
    """Share of new sessions whose recall at the rule's threshold reaches the floor."""
    from nas.objective import recall_lower_bound, session_recall_bound

    kind, _, conf = rule.partition(":")
    rng = np.random.default_rng(seed)
    kept = []
    for rep in range(reps):
        mus, ns = rng.normal(MU, SPREAD, SEEN), rng.integers(*POSITIVES, SEEN)
        prob = np.concatenate([rng.normal(m, 1.0, n) for m, n in zip(mus, ns, strict=True)])
        thresholds = np.sort(prob)
        if kind == "frames":  # Wilson's bound on the pooled frames' recall
            bound = recall_lower_bound(1 - np.arange(len(prob)) / len(prob), len(prob), float(conf))
        else:
            bound = session_recall_bound(np.ones(len(prob), int), prob, np.repeat(np.arange(SEEN), ns), thresholds,
                                         float(conf), seed=rep)
        t = thresholds[np.flatnonzero(bound >= FLOOR).max()]
        new_mus, new_ns = rng.normal(MU, SPREAD, NEW), rng.integers(*POSITIVES, NEW)
        kept += [np.mean(rng.normal(m, 1.0, n) >= t) >= FLOOR for m, n in zip(new_mus, new_ns, strict=True)]
    return float(np.mean(kept))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    out = {}
    for rule in RULES:
        out[rule] = round(coverage(rule, args.reps, args.seed), 4)
        print(f"{rule}: {out[rule]:.3f} of new sessions keep recall >= {FLOOR:g}")
    print(json.dumps({"reps": args.reps, "seed": args.seed, "new_per_rep": NEW, "seen_sessions": SEEN, "coverage": out}))


if __name__ == "__main__":
    main()
