"""Refusing to resume a run whose experiment or space was edited: that would mix trials of two searches
(keras-tuner #290, #461). Only the budget may grow."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from nas import config as config_mod
from nas.errors import NasError
from nas.runlog import RunDir
from nas.space import SearchSpace, load_space

BUDGET_KEYS = ("budget.max_trials", "budget.time_budget")


def refuse_changes(run: RunDir, frozen: config_mod.Experiment, space: SearchSpace) -> None:
    """Compare the files the run came from with its frozen copies; raise NasError showing any change."""
    meta_path = run.path / "run.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    problems = [p for p in (_experiment_change(meta, frozen), _space_change(meta, space)) if p]
    if problems:
        raise NasError(f"{run.path}: refusing to resume: " + "\n".join(problems)
                       + "\nRestore the files, or start a new run with 'nas search'. Only --max-trials and --time-budget may change.")


def _experiment_change(meta: dict, frozen: config_mod.Experiment) -> str:
    source = Path(meta["experiment_file"])
    if not source.is_file():
        return ""
    try:
        now = config_mod.load_experiment(source, meta.get("overrides", []), base=meta.get("cwd"))
        lines = config_mod.diff(frozen.values, now.values, ignore=BUDGET_KEYS)
    except NasError as exc:
        lines = [f"it no longer loads: {exc}"]
    return f"{source} changed since the run started:\n    " + "\n    ".join(lines) if lines else ""


def _space_change(meta: dict, space: SearchSpace) -> str:
    space_file = Path(meta["space_file"])
    if not space_file.is_file():
        return ""
    try:
        changed = load_space(space_file).fingerprint != space.fingerprint
    except NasError:
        changed = True
    if not changed:
        return ""
    delta = difflib.unified_diff(space.text.splitlines(), space_file.read_text().splitlines(),
                                 "search_space.yaml (frozen)", str(space_file), lineterm="", n=0)
    return f"{space_file} changed since the run started:\n    " + "\n    ".join(delta)
