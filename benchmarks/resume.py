"""Work lost per kill -9, and time from `nas resume` to its first new epoch.

A small search is killed with SIGKILL mid-trial several times; after each kill `nas resume` runs. Work lost
per kill = epochs that had been logged for the in-flight trial but had to run again. KerasTuner alone
would restart the trial from epoch 0 (losing every epoch of it); the goal here is at most 1.
Usage: python benchmarks/resume.py [--kills 5] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, experiment, nas

from nas.runlog import read_events

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}


def epochs_logged(run: Path) -> list[dict]:
    return [e for e in read_events(run / "trials.jsonl") if e["event"] == "epoch"] if (run / "trials.jsonl").exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lost, to_first_epoch = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nas("demo-data", tmp / "data", "--n", 160, "--size", 64, "--seed", 5, "--groups", 6)
        exp = experiment(tmp / "e.toml", tmp / "data", image_size=48, batch_size=16,
                         budget={"max_trials": 3, "epochs": args.epochs})
        run = tmp / "results" / "bench" / "r"
        for k in range(args.kills + 1):
            cmd = ["search", str(exp), "--results", str(tmp / "results"), "--run-id", "r"] if k == 0 else ["resume", str(run)]
            before = epochs_logged(run)
            t0 = time.time()
            proc = subprocess.Popen([sys.executable, "-m", "nas", *cmd], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and len(epochs_logged(run)) <= len(before):
                time.sleep(0.02)
            now = epochs_logged(run)
            if k > 0 and len(now) > len(before):
                first = now[len(before)]
                to_first_epoch.append(first["time"] - t0)
                last_before = max((e["epoch"] for e in before if e["trial_id"] == first["trial_id"]), default=0)
                lost.append(max(0, last_before - (first["epoch"] - 1)))  # epochs logged before the kill, run again
            if k == args.kills or proc.poll() is not None:
                proc.wait()
                break
            # let it run into its trial, then kill it at a random moment within an epoch
            target = len(epochs_logged(run)) + rng.randint(1, 3)
            while proc.poll() is None and len(epochs_logged(run)) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        nas("resume", run)
        finished = [e for e in read_events(run / "trials.jsonl") if e["event"] == "trial_finished"]
    per_kill = sum(lost) / max(len(lost), 1)
    print(f"{len(lost)} kills; epochs run again after each: {lost}; mean {per_kill:.2f} (KerasTuner alone: the whole trial)")
    print(f"nas resume -> first new epoch: {', '.join(f'{t:.1f}' for t in to_first_epoch)} s "
          f"(median {sorted(to_first_epoch)[len(to_first_epoch) // 2]:.1f} s, including the TensorFlow import)")
    print(f"trials finished exactly once: {sorted(e['trial_id'] for e in finished)}")
    print(json.dumps({"epochs_lost_per_kill": round(per_kill, 3),
                      "resume_to_first_epoch_s": round(sorted(to_first_epoch)[len(to_first_epoch) // 2], 2)}))


if __name__ == "__main__":
    main()
