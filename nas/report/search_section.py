"""The report's account of the search, all on the validation split: the top trials, which hyperparameters
mattered and how the objective moves with them, the best objective over trials and time, objective against
parameters and latency with the Pareto front, and PR curves of the top trials.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import NasError
from nas.leaderboard import collect, select
from nas.report.document import Block, Figure, Heading, Para, Table, figure_png
from nas.report.importance import Importance, importance
from nas.runlog import RunDir, read_events
from nas.trial import SHOWN_STATUSES, Event, TrialStatus

PLOTTED_PARAMS = 4  # objective-vs-parameter panels


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats (lower or equal cost and higher or equal value, one strictly)."""
    front = []
    for i in range(len(cost)):
        dominated = np.any((cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i])))
        if not dominated:
            front.append(i)
    return np.array(sorted(front, key=lambda i: cost[i]), dtype=int)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "-".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def search_blocks(run: RunDir, floor: float, positive: str, top: int = 5) -> list[Block]:
    """Every block of the search section, for a run with at least one finished trial."""
    every = select(collect([run.path]), status="all")
    rows = [r for r in every if r["status"] == TrialStatus.FINISHED]
    if not rows:
        raise NasError(f"{run.path}: no finished trials to report on yet")
    counts = {s: sum(r["status"] == s for r in every) for s in SHOWN_STATUSES}  # e.g. "5 finished, 1 failed"
    finished = sorted((e for e in read_events(run.trials_log) if e["event"] == Event.TRIAL_FINISHED and e.get("feasible", True)),
                      key=lambda e: e["time"])
    starts = [e["time"] for e in read_events(run.trials_log) if e["event"] == Event.SEARCH_STARTED]
    t0 = starts[0] if starts else finished[0]["time"]
    imp = importance(rows)
    split = rows[0].get("split") or "val"  # "oof": pooled out-of-fold predictions under cross-validation
    shown = min(top, len(rows))
    return [
        Heading(f"The search ({split} split)"),
        Para(", ".join(f"{n} {status}" for status, n in counts.items() if n) + f", over {(finished[-1]['time'] - t0) / 60:.1f} minutes. Objective: "
             f"precision at recall >= {floor:g} on the **{split}** split (95% bootstrap interval)."),
        Heading(f"Top {shown} trials", 3),
        _top_table(rows[:shown]),
        Heading("Which hyperparameters mattered", 3),
        *_importance_blocks(imp),
        *_params_figure(rows, imp),
        Heading("Best objective over trials and time", 3),
        Figure("objective_over_trials.png", _progress_png(finished, t0, floor), "best objective over trials and time"),
        Heading("Objective against parameters and latency", 3),
        Para("Red: the Pareto front (no other trial is both cheaper and better)."),
        Figure("pareto.png", _pareto_png(rows), "objective against parameters and latency, Pareto fronts"),
        Heading("PR curves of the top trials", 3),
        Figure("pr_curves.png", _pr_curves_png(run, rows[:top], floor, positive), "PR curves of the top trials"),
    ]


def _top_table(rows: list[dict[str, Any]]) -> Table:
    keep = ["rank", "trial_id", "objective", "objective_ci95", "threshold", "pr_auc", "params", "latency_ms", "seconds"]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    return Table([*keep, *(p.removeprefix("param_") for p in params)], [[_fmt(r.get(k)) for k in [*keep, *params]] for r in rows])


def _importance_blocks(imp: Importance) -> list[Block]:
    explain = Para(
        f"A random forest predicts a trial's val objective from its hyperparameters; a parameter's importance is how "
        f"much worse its predictions on held-out trials get when that parameter's values are shuffled ({imp.trials} "
        "finished trials, 5-fold, in units of the objective's variance; 0 means no effect that these trials show)."
    )
    if not imp.ranking:
        return [Para(f"**{imp.note[0].upper() + imp.note[1:]}.** (A random forest's permutation importance over the "
                     "trials' hyperparameters ranks them once there are enough trials.) The panels below show the "
                     "objective against the first searched hyperparameters, by name.")]
    table = Table(["hyperparameter", "importance", "± (spread)"],
                  [[f"`{n.removeprefix('param_')}`", f"{m:.3f}", f"{s:.3f}"] for n, m, s in imp.ranking])
    fit = Para(f"Out-of-fold R² of the forest: {imp.cv_r2:.2f}." + (f" **{imp.note[0].upper() + imp.note[1:]}.**" if imp.note else ""))
    return [explain, table, fit]


def _params_figure(rows: list[dict[str, Any]], imp: Importance) -> list[Block]:
    names = [n for n, *_ in imp.ranking[:PLOTTED_PARAMS]]
    title = "Objective against the most important hyperparameters (val split)"
    if not names:  # no ranking: the first varying parameters by name
        title = "Objective against the searched hyperparameters (val split)"
        names = sorted(k for k in {k for r in rows for k in r if k.startswith("param_")}
                       if len({repr(r.get(k)) for r in rows}) > 1)[:PLOTTED_PARAMS]
    if not names:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), sharey=True, squeeze=False)
    y = np.array([r["objective"] for r in rows])
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(rows))
    for ax, name in zip(axes[0], names, strict=True):
        values = [r.get(name) for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            x = np.array(values, dtype=float)
            ax.scatter(x, y, alpha=0.65)
            if x.min() > 0 and x.max() / x.min() > 20:
                ax.set_xscale("log")
        else:
            labels = sorted({repr(v) for v in values})
            x = np.array([labels.index(repr(v)) for v in values]) + jitter
            ax.scatter(x, y, alpha=0.65)
            ax.set_xticks(range(len(labels)), [s.strip("'") for s in labels], fontsize=8)
        ax.scatter(x[:1], y[:1], color="C3", label="best trial")
        ax.set_xlabel(name.removeprefix("param_"), fontsize=9)
    axes[0][0].set_ylabel("val objective")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return [Figure("objective_vs_params.png", figure_png(fig), title)]


def _progress_png(finished: list[dict[str, Any]], t0: float, floor: float) -> bytes:
    plt = _plt()
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
    return figure_png(fig)


def _pareto_png(rows: list[dict[str, Any]]) -> bytes:
    plt = _plt()
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
    return figure_png(fig)


def _val_labels(split_csv: Path, positive: str) -> tuple[np.ndarray, str]:
    """Labels in the order a trial stores its validation probabilities, and that file's name: the val split
    (val_probs.npy), or every train+val frame fold by fold under cross-validation (oof_probs.npy)."""
    with split_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if any(r.get("fold") for r in rows):
        ordered = sorted((r for r in rows if r.get("fold")), key=lambda r: int(r["fold"]))  # stable: row order within a fold
        return np.array([r["label"] == positive for r in ordered], dtype=int), "oof_probs.npy"
    return np.array([r["label"] == positive for r in rows if r["split"] == "val"], dtype=int), "val_probs.npy"


def _pr_curves_png(run: RunDir, rows: list[dict[str, Any]], floor: float, positive: str) -> bytes:
    from sklearn.metrics import precision_recall_curve

    plt = _plt()
    y, probs_file = _val_labels(run.split, positive)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for r in rows:
        path = run.trial_dir(r["trial_id"]) / probs_file
        probs = np.load(path) if path.is_file() else None
        if probs is None or len(probs) != len(y):  # frames skipped at caching leave no row-for-row match
            continue
        prec, rec, _ = precision_recall_curve(y, probs)
        ax.plot(rec, prec, lw=1.3, label=f"trial {r['trial_id']} ({r['objective']:.3f})")
    ax.axvline(floor, color="gray", ls="--", lw=1, label=f"recall floor {floor:g}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR curves, top {len(rows)} (val split)", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
