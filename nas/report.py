"""`nas report RUN`: a Markdown page with PNG plots of how a search went and what it found.

Figures: best objective over trials and over time; objective against parameters and against latency with
the Pareto front marked; PR curves of the top trials. All figures are on the validation split.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import load_experiment
from nas.errors import NasError
from nas.leaderboard import collect, render, select
from nas.runlog import RunDir, read_events


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats (lower or equal cost and higher or equal value, one strictly)."""
    front = []
    for i in range(len(cost)):
        dominated = np.any((cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i])))
        if not dominated:
            front.append(i)
    return np.array(sorted(front, key=lambda i: cost[i]), dtype=int)


def _val_labels(run: RunDir, positive: str) -> tuple[np.ndarray, str]:
    """Labels in the order a trial stores its validation probabilities, and that file's name: the val split
    (val_probs.npy), or every train+val frame fold by fold under cross-validation (oof_probs.npy)."""
    with run.split.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if any(r.get("fold") for r in rows):
        ordered = sorted((r for r in rows if r.get("fold")), key=lambda r: int(r["fold"]))  # stable: row order within a fold
        return np.array([r["label"] == positive for r in ordered], dtype=int), "oof_probs.npy"
    return np.array([r["label"] == positive for r in rows if r["split"] == "val"], dtype=int), "val_probs.npy"


def make_report(run_path: str | Path, out: str | Path | None = None, top: int = 5) -> Path:
    """Write report.md and its plots to RUN/report (or `out`); returns the Markdown file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    run = RunDir(Path(run_path)).check_exists()
    rows = select(collect([run.path]), status="finished")
    if not rows:
        raise NasError(f"{run.path}: no finished trials to report on yet")
    events = read_events(run.trials_log)
    starts = [e["time"] for e in events if e["event"] == "search_started"]
    t0 = starts[0] if starts else min(e["time"] for e in events)
    finished = sorted((e for e in events if e["event"] == "trial_finished"), key=lambda e: e["time"])
    exp = load_experiment(run.experiment, resolve_paths=False)
    floor = exp.objective.recall_floor

    final = Path(out) if out else run.path / "report"
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    # 1. best objective over trials and over time
    obj = np.array([e["objective"] for e in finished])
    best = np.maximum.accumulate(obj)
    minutes = (np.array([e["time"] for e in finished]) - t0) / 60
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    axes[0].plot(np.arange(1, len(obj) + 1), obj, "o", alpha=0.6, label="trial")
    axes[0].step(np.arange(1, len(obj) + 1), best, where="post", color="C3", label="best so far")
    axes[0].set(xlabel="trials finished", ylabel=f"val precision @ recall >= {floor:g}")
    axes[0].legend(loc="lower right")
    axes[1].plot(minutes, obj, "o", alpha=0.6)
    axes[1].step(minutes, best, where="post", color="C3")
    axes[1].set(xlabel="minutes since the search started")
    fig.suptitle("Best objective (val split)")
    fig.tight_layout()
    fig.savefig(tmp / "objective_over_trials.png", dpi=100)
    plt.close(fig)

    # 2. objective vs parameters and latency, Pareto fronts marked
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    value = np.array([r["objective"] for r in rows])
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "latency_ms", "latency, ms/frame at batch 1")):
        cost = np.array([float(r.get(key) or 0) for r in rows])
        ax.scatter(cost, value, alpha=0.6, label="trial")
        front = pareto_front(cost, value)
        ax.plot(cost[front], value[front], "-o", color="C3", label="Pareto front")
        ax.set(xlabel=label, xscale="log" if key == "params" and cost.min() > 0 else "linear")
        for i in front:
            ax.annotate(str(rows[i]["trial_id"]), (cost[i], value[i]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    axes[0].set_ylabel("val precision at the floor")
    axes[0].legend(loc="lower right")
    fig.suptitle("Objective against cost (val split)")
    fig.tight_layout()
    fig.savefig(tmp / "pareto.png", dpi=100)
    plt.close(fig)

    # 3. PR curves of the top trials
    y, probs_file = _val_labels(run, exp.data.positive)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for r in rows[:top]:
        path = run.trial_dir(r["trial_id"]) / probs_file
        if not path.is_file():
            continue
        prec, rec, _ = precision_recall_curve(y, np.load(path))
        ax.plot(rec, prec, lw=1.3, label=f"trial {r['trial_id']} ({r['objective']:.3f})")
    ax.axvline(floor, color="gray", ls="--", lw=1, label=f"recall floor {floor:g}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR curves, top {min(top, len(rows))} (val split)", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(tmp / "pr_curves.png", dpi=100)
    plt.close(fig)

    counts = _status_counts(run)
    md = [
        f"# Search report: {run.path.parent.name} / {run.run_id}",
        "",
        f"{counts.get('finished', 0)} trials finished, {counts.get('failed', 0)} failed, "
        f"{counts.get('interrupted', 0)} interrupted, over {(finished[-1]['time'] - t0) / 60:.1f} minutes. "
        f"Objective: precision at recall >= {floor:g} on the **val** split (95% bootstrap interval in brackets).",
        "",
        f"## Top {min(top, len(rows))} trials",
        "",
        render(_brief(rows[:top]), "md"),
        "## Best objective over trials and time",
        "",
        "![best objective](objective_over_trials.png)",
        "",
        "## Objective against parameters and latency",
        "",
        "Red: the Pareto front (no other trial is both cheaper and better).",
        "",
        "![pareto](pareto.png)",
        "",
        "## PR curves of the top trials",
        "",
        "![pr curves](pr_curves.png)",
        "",
    ]
    (tmp / "report.md").write_text("\n".join(md))
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final / "report.md"


def _brief(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("rank", "trial_id", "objective", "objective_ci95", "threshold", "pr_auc", "params", "latency_ms", "seconds")
    return [{k: r.get(k) for k in keep} | {k: v for k, v in r.items() if k.startswith("param_")} for r in rows]


def _status_counts(run: RunDir) -> dict[str, int]:
    from nas.runlog import read_trials

    counts: dict[str, int] = {}
    for rec in read_trials(run.trials_log).values():
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts
