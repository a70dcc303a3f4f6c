"""The leaderboard: one flat row per trial, across any number of runs, ranked by the search's own rule.

Rows come from trials.jsonl alone (the record of truth), so the table agrees with the log by construction.
Formats: an aligned terminal table, CSV, JSON (a list of row objects) and Markdown.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.runlog import RunDir, read_trials
from nas.trial import SHOWN_STATUSES, TrialRecord, TrialStatus, rank_key

FORMATS = ("table", "csv", "json", "md")
COLUMNS = (
    "rank", "run", "trial_id", "status", "feasible", "split", "objective", "objective_ci95", "folds", "from_init", "threshold", "recall",
    "tie_break", "pr_auc", "val_loss", "params", "latency_ms", "seconds", "epochs_run", "best_epoch", "reason",
)
STATUSES = (*SHOWN_STATUSES, "all")


def collect(runs: list[str | Path]) -> list[dict[str, Any]]:
    """Flat, ranked rows for every trial of every run; `param_*` columns hold hyperparameters."""
    ranked: list[tuple[tuple, str, TrialRecord]] = []
    for run_path in runs:
        run = RunDir(Path(run_path))
        if not run.trials_log.is_file():
            raise NasError(f"{run.path}: no trials.jsonl here; expected a run folder results/<experiment>/<run-id>")
        label = f"{run.path.parent.name}/{run.run_id}"
        ranked += [(rank_key(rec), label, rec) for rec in read_trials(run.trials_log).values()]
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [row(rec, label, rank) for rank, (_, label, rec) in enumerate(ranked, start=1)]


def row(rec: TrialRecord, run: str, rank: int) -> dict[str, Any]:
    """One trial as a flat table row."""
    out = {"rank": rank, "run": run}
    for column in COLUMNS[2:]:
        out[column] = getattr(rec, column, None)
    out["status"] = rec.shown_status
    out["folds"] = f"{rec.folds_done}/{rec.folds_total}" if rec.folds_total else None
    out["objective_ci95"] = list(rec.objective_ci95) if rec.objective_ci95 else None
    for name, value in sorted(rec.hyperparameters.items()):
        out[f"param_{name}"] = value
    return out


def select(rows: list[dict[str, Any]], *, status: str = TrialStatus.FINISHED, top: int | None = None, sort: str | None = None) -> list[dict[str, Any]]:
    if status not in STATUSES:
        raise NasError(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
    out = [r for r in rows if status == "all" or r["status"] == status]
    if sort:
        if out and not any(sort in r for r in out):
            raise NasError(f"--sort {sort!r}: no such column; expected one of {', '.join(all_columns(out))}")
        descending = sort in ("objective", "tie_break", "pr_auc", "recall")
        present = [r for r in out if r.get(sort) is not None]
        missing = [r for r in out if r.get(sort) is None]
        out = sorted(present, key=lambda r: r[sort], reverse=descending) + missing
    return out[:top] if top else out


def all_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The known columns these rows carry (all of them for rows from collect), then param_* columns."""
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    known = [c for c in COLUMNS if not rows or any(c in r for r in rows)]
    return [*known, *params]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "-".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _uninformative(column: str, rows: list[dict[str, Any]]) -> bool:
    """Columns a person reading the table learns nothing from (CSV and JSON keep them all)."""
    if not any(r.get(column) not in (None, "") for r in rows):
        return True  # empty everywhere: val_loss under cross-validation, reason when nothing went wrong
    if column == "feasible":
        return all(r.get("feasible", True) for r in rows)
    if column == "from_init":  # shown only when some trial started from training.init_weights
        return not any(r.get("from_init") for r in rows)
    if column == "split":
        return len({r.get(column) for r in rows}) <= 1
    if column == "tie_break":
        return all(r.get("tie_break") == r.get("pr_auc") for r in rows)
    return False


def render(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """The rows as text in one of FORMATS."""
    if fmt not in FORMATS:
        raise NasError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    cols = all_columns(rows)
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()} for r in rows)
        return buf.getvalue()
    shown = [c for c in cols if not _uninformative(c, rows)]
    cells = [[_cell(r.get(c)) for c in shown] for r in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(shown)]
    header = "  ".join(h.ljust(w) for h, w in zip(shown, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    splits = sorted({str(r.get("split")) for r in rows if r.get("split")}) or ["val"]
    oof = "; oof: pooled out-of-fold predictions" if "oof" in splits else ""
    note = f"objective = exact validation precision at the recall floor (split: {', '.join(splits)}{oof})"
    return "\n".join([header.rstrip(), *body, note]) + "\n"
