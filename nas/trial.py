"""What a trial is: its status, the event names of the run log, the typed record folded from those events,
and the one rule that ranks trials.

Every status and event name is spelled here and nowhere else. A trial's record is written and read only
through the run storage (`nas.runlog`), which checks each field against the types declared below, so a
damaged log names the line and the field instead of failing somewhere downstream.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TIE_EPSILON = 1e-6  # the oracle sees objective + eps * tie-break: lexicographic for any real difference
INFEASIBLE_SCORE = -2.0  # what the oracle sees for an infeasible trial: below every feasible one (those are >= 0)


class TrialStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


INFEASIBLE = "infeasible"  # how a finished trial over a constraint is shown
SHOWN_STATUSES = (*(str(s) for s in TrialStatus), INFEASIBLE)


class Event(StrEnum):
    """Every kind of line in trials.jsonl."""

    SEARCH_STARTED = "search_started"
    TRIAL_PROPOSED = "trial_proposed"
    TRIAL_STARTED = "trial_started"
    EPOCH = "epoch"
    FOLD_FINISHED = "fold_finished"
    TRIAL_FINISHED = "trial_finished"
    TRIAL_FAILED = "trial_failed"
    TRIAL_INTERRUPTED = "trial_interrupted"
    BUDGET_PASSED = "budget_passed"  # the time budget ran out before any trial finished: that trial goes on
    SEARCH_ENDED = "search_ended"
    DATA_SKIPPED = "data_skipped"
    WORKER_RECYCLED = "worker_recycled"
    WORKER_LOST = "worker_lost"


class RecordError(ValueError):
    """A log line whose fields do not have the declared types; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class FoldResult:
    """One fold of a cross-validated trial: its own figures on its held-out frames."""

    fold: int
    objective: float
    threshold: float | None = None
    n: int = 0
    positives: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    from_init: bool = False


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial as the log tells it. Figures are on the validation split (`split`): the val split, or the
    pooled out-of-fold predictions of a cross-validated trial ("oof")."""

    trial_id: str
    status: TrialStatus = TrialStatus.RUNNING
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    feasible: bool = True
    objective: float | None = None
    objective_ci95: tuple[float, ...] | None = None
    recall: float | None = None
    threshold: float | None = None
    threshold_note: str = ""
    tie_break: float | None = None
    tie_break_name: str = ""
    pr_auc: float | None = None
    val_loss: float | None = None
    params: int | None = None
    latency_ms: float | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    folds_done: int | None = None
    folds_total: int | None = None
    raced_out: bool = False
    split: str = "val"
    reason: str = ""
    seconds: float | None = None
    fit_seconds: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    precision_policy: str = ""
    from_init: bool = False  # its network started from training.init_weights, not from random weights
    rss_mb: float | None = None
    pid: int | None = None
    tuner_id: str = ""
    started: float | None = None
    predicted_seconds: float | None = None  # search.cost_aware: what its proposal expected the trial to take
    proposed_by: str = ""
    time: float | None = None
    epochs: tuple[dict[str, Any], ...] = ()
    folds: tuple[FoldResult, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "status", TrialStatus(self.status))  # a plain string is accepted too

    @property
    def usable(self) -> bool:
        """Finished and feasible: a trial with a model worth ranking and exporting."""
        return self.status is TrialStatus.FINISHED and self.feasible

    @property
    def complete(self) -> bool:
        """Usable, and trained on every fold it was meant to (a trial raced out after some folds is not)."""
        return self.usable and not self.raced_out and (self.folds_total is None or self.folds_done == self.folds_total)

    @property
    def shown_status(self) -> str:
        """The status as a person reads it: a finished trial over a constraint is 'infeasible'."""
        return INFEASIBLE if self.status is TrialStatus.FINISHED and not self.feasible else str(self.status)

    def outcome_fields(self) -> dict[str, Any]:
        """What a trial_finished event carries: every field but the ones folded from other events."""
        skip = {"status", "epochs", "folds", "started", "time", "predicted_seconds", "proposed_by"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def replace(self, **changes: Any) -> TrialRecord:
        return dataclasses.replace(self, **changes)


def rank_key(rec: TrialRecord) -> tuple:
    """Sort key (ascending = best first). Tiers: complete usable trials; usable trials raced out or cut
    short before their last fold (an estimate from fewer frames); infeasible; failed; interrupted; running.
    Within a tier: objective, then the stated tie-break, both descending; then the trial id."""
    if rec.usable:
        tier = 0 if rec.complete else 1
    else:
        tier = {INFEASIBLE: 2, TrialStatus.FAILED: 3, TrialStatus.INTERRUPTED: 4}.get(rec.shown_status, 5)
    return (tier, -(rec.objective or 0.0), -(rec.tie_break or 0.0), rec.trial_id)


def oracle_score(rec: TrialRecord) -> float:
    """The single number the tuner's oracle maximizes; it orders usable trials as rank_key does:
    objective + eps * tie-break (both in [0, 1]); an infeasible trial scores INFEASIBLE_SCORE."""
    if not rec.feasible:
        return INFEASIBLE_SCORE
    return (rec.objective or 0.0) + TIE_EPSILON * (rec.tie_break or 0.0)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """A JSON value as the declared type, or RecordError naming the field."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation) or annotation
    if origin is FoldResult and isinstance(value, dict):
        return from_fields(FoldResult, value)
    checks = {float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool), bool: lambda v: isinstance(v, bool),
              str: lambda v: isinstance(v, str), dict: lambda v: isinstance(v, dict),
              tuple: lambda v: isinstance(v, (list, tuple)), TrialStatus: lambda v: v in set(TrialStatus)}
    if origin in checks and not checks[origin](value):
        raise RecordError(f"field {name!r}: expected {getattr(origin, '__name__', origin)}, got {value!r}")
    if origin is tuple:
        inner = typing.get_args(annotation)
        return tuple(_coerce(name, inner[0], v) for v in value) if inner and inner[0] is FoldResult else tuple(value)
    if origin is float:
        return float(value)
    if origin is TrialStatus:
        return TrialStatus(value)
    return value


def from_fields(cls: type, fields: dict[str, Any]) -> Any:
    """Build a record from an event's fields, checking each declared field's type; unknown fields (written
    by a newer version) are left out."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: _coerce(k, hints[k], v) for k, v in fields.items() if k in names}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecordError(f"missing field {missing[0]!r}")
    return cls(**values)
