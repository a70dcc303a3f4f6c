"""Trials per hour with a chief and two local workers vs one process, measured side by side in one run.

Both searches run the same tuner, space, data and budget. The figure depends on the cores: two workers
share this machine's cores, so they gain from overlapping each other's start-up, data and evaluation
phases rather than from doubling compute.
Usage: python benchmarks/distributed.py [--trials 6] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, experiment, nas

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}


def timed_search(exp: Path, results: Path, run_id: str, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas", "search", str(exp), "--results", str(results), "--run-id", run_id, *extra],
                   env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nas("demo-data", tmp / "data", "--n", 300, "--size", 96, "--seed", 4, "--groups", 6)
        exp = experiment(tmp / "e.toml", tmp / "data", budget={"max_trials": args.trials, "epochs": args.epochs})
        nas("search", exp, "--results", tmp / "results", "--run-id", "warm", "--max-trials", 1)  # cache built once
        one = timed_search(exp, tmp / "results", "one")
        two = timed_search(exp, tmp / "results", "two", "--workers", "2")
    per_hour_one, per_hour_two = args.trials / one * 3600, args.trials / two * 3600
    cores = os.cpu_count()
    print(f"{args.trials} trials of {args.epochs} epochs on {cores} cores: one process {one:.1f} s ({per_hour_one:.0f} trials/h), "
          f"chief + 2 workers {two:.1f} s ({per_hour_two:.0f} trials/h) -> {per_hour_two / per_hour_one:.2f}x")
    print(json.dumps({"two_workers_vs_one": round(per_hour_two / per_hour_one, 3), "cores": cores}))


if __name__ == "__main__":
    main()
