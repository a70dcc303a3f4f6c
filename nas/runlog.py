"""Run storage: the run folder, atomic writes, the append-only trial log, and the one-writer lock.

Everything a run writes goes through here, so every write is either whole or absent after a kill:
files are written to a temporary name, fsynced and renamed; the trial log is appended a line at a time
and a torn last line (a kill mid-append) is dropped on read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import LockedRunError, NasError
from nas.trial import Event, FoldResult, RecordError, TrialRecord, TrialStatus, from_fields


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def atomic_folder(final: Path, seed_from: Path | None = None) -> Iterator[Path]:
    """A folder written whole or not at all: yields a temporary folder beside `final` (a copy of `seed_from`,
    if given) and renames it into place when the block ends, replacing any old `final`; on an error it is
    removed and `final` stays as it was."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if seed_from is not None:
        shutil.copytree(seed_from, tmp)
    else:
        tmp.mkdir()
    try:
        yield tmp
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@dataclass(frozen=True)
class RunDir:
    """The folder of one run: results/<experiment>/<run-id>/ (layout in the README)."""

    path: Path

    @property
    def experiment(self) -> Path:
        return self.path / "experiment.toml"

    @property
    def space(self) -> Path:
        return self.path / "search_space.yaml"

    @property
    def split(self) -> Path:
        return self.path / "split.csv"

    @property
    def trials_log(self) -> Path:
        return self.path / "trials.jsonl"

    @property
    def tuner(self) -> Path:
        return self.path / "tuner"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def lock(self) -> Path:
        return self.path / "LOCK"

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def cache_root(self) -> Path:
        """results/.cache/: decoded frames shared by the runs of every experiment under this results folder."""
        return self.path.parent.parent / ".cache"

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials / trial_id

    def check_exists(self) -> RunDir:
        if not self.experiment.is_file():
            raise NasError(f"{self.path}: not a run folder (no experiment.toml); expected results/<experiment>/<run-id>")
        return self


def create_run(exp, space, results: Path, run_id: str | None) -> RunDir:
    """A new run folder with the experiment and space frozen into it, and where they came from (run.json),
    so a later resume can refuse edits to either."""
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run = RunDir(Path(results) / exp.name / run_id)
    if run.path.exists() and any(run.path.iterdir()):
        raise NasError(f"{run.path}: run already exists; continue it with 'nas resume {run.path}' or pick another --run-id")
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.experiment, exp.to_toml())
    atomic_write_text(run.space, space.text)
    atomic_write_json(run.path / "run.json", {
        "experiment_file": str(Path(exp.source).resolve()), "overrides": list(exp.overrides),
        "cwd": str(Path.cwd()), "space_file": exp.search.space, "created": time.time()})
    return run


def append_event(log: Path, event: Event, **fields: Any) -> dict[str, Any]:
    """Append one event as a JSON line and fsync it: the log is the record of truth for trials."""
    if event not in set(Event):
        raise ValueError(f"unknown event {event!r}")
    record = {"event": str(event), "time": round(time.time(), 3), **fields}
    line = (json.dumps(record, default=_jsonable, sort_keys=False) + "\n").encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write() of the whole line with O_APPEND: lines of several worker processes never interleave
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return record


class EventLog:
    """A run's trials.jsonl as the search writes and reads it, with an optional sink that sees each event
    (the CLI's progress lines)."""

    def __init__(self, run: RunDir, sink: Callable[[dict[str, Any]], None] | None = None):
        self.path, self.sink = run.trials_log, sink

    def emit(self, event: Event, **fields: Any) -> dict[str, Any]:
        record = append_event(self.path, event, **fields)
        if self.sink:
            self.sink(record)
        return record

    def finished(self, record: TrialRecord) -> None:
        """Write a finished trial's record as its trial_finished event."""
        self.emit(Event.TRIAL_FINISHED, **record.outcome_fields())

    def trials(self) -> dict[str, TrialRecord]:
        return read_trials(self.path)


def _numbered_events(log: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, event) of every complete line; a torn last line (a kill mid-append) is skipped."""
    if not Path(log).is_file():
        return
    with open(log) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith("\n"):
                break  # torn last line
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield number, event


def read_events(log: Path) -> list[dict[str, Any]]:
    """All complete events, as written."""
    return [event for _, event in _numbered_events(log)]


def repair_log(log: Path) -> int:
    """Drop a torn last line in place (before appending after a crash); returns bytes removed."""
    if not Path(log).is_file():
        return 0
    data = Path(log).read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data[: data.rfind(b"\n") + 1]
    atomic_write_text(log, keep.decode())
    return len(data) - len(keep)


_TRIAL_EVENTS = {Event.TRIAL_PROPOSED, Event.TRIAL_STARTED, Event.EPOCH, Event.FOLD_FINISHED, Event.TRIAL_FINISHED, Event.TRIAL_FAILED,
                 Event.TRIAL_INTERRUPTED}


def read_trials(log: Path) -> dict[str, TrialRecord]:
    """One typed record per trial, folded from its events in log order (the latest outcome wins). A line
    whose fields do not have the declared types is an error naming the line and the field."""
    trials: dict[str, TrialRecord] = {}
    for number, ev in _numbered_events(log):
        kind, tid = ev.get("event"), ev.get("trial_id")
        if kind not in _TRIAL_EVENTS or tid is None:
            continue
        try:
            trials[str(tid)] = _fold(trials.get(str(tid)) or TrialRecord(trial_id=str(tid)), Event(kind), ev)
        except RecordError as exc:
            raise NasError(f"{log}:{number}: {kind} event of trial {tid}: {exc}") from None
    # a proposal whose trial never started (a kill between our line and KerasTuner's state file) is no trial
    return {tid: rec for tid, rec in trials.items()
            if not (rec.proposed_by and rec.started is None and rec.status is TrialStatus.RUNNING)}


def _fold(rec: TrialRecord, kind: Event, ev: dict[str, Any]) -> TrialRecord:
    """One event applied to a trial's record."""
    if kind is Event.TRIAL_PROPOSED:
        proposed = from_fields(TrialRecord, {"trial_id": rec.trial_id, "predicted_seconds": ev.get("predicted_seconds"),
                                             "proposed_by": ev.get("proposed_by", "")})
        return rec.replace(predicted_seconds=proposed.predicted_seconds, proposed_by=proposed.proposed_by)
    if kind is Event.TRIAL_STARTED:
        started = from_fields(TrialRecord, {"trial_id": rec.trial_id, "hyperparameters": ev.get("hyperparameters", {}),
                                            "fidelity": ev.get("fidelity", {}), "started": ev.get("time")})
        return rec.replace(status=TrialStatus.RUNNING, hyperparameters=started.hyperparameters,
                           fidelity=started.fidelity, started=started.started)
    if kind is Event.EPOCH:
        entry = {k: v for k, v in ev.items() if k not in ("event", "trial_id")}
        same = (entry.get("epoch"), entry.get("fold"))
        return rec.replace(epochs=(*[e for e in rec.epochs if (e.get("epoch"), e.get("fold")) != same], entry))
    if kind is Event.FOLD_FINISHED:
        fold = from_fields(FoldResult, {k: v for k, v in ev.items() if k not in ("event", "trial_id", "time")})
        return rec.replace(folds=tuple(sorted([*(f for f in rec.folds if f.fold != fold.fold), fold], key=lambda f: f.fold)))
    if kind is Event.TRIAL_FINISHED:
        fields = {**ev, "status": TrialStatus.FINISHED, "trial_id": rec.trial_id}
        fields.setdefault("hyperparameters", rec.hyperparameters)
        return from_fields(TrialRecord, fields).replace(epochs=rec.epochs, folds=rec.folds, started=rec.started,
                                                        predicted_seconds=rec.predicted_seconds, proposed_by=rec.proposed_by)
    if kind is Event.TRIAL_FAILED:
        failed = from_fields(TrialRecord, {"trial_id": rec.trial_id, "reason": ev.get("reason", ""), "seconds": ev.get("seconds")})
        return rec.replace(status=TrialStatus.FAILED, reason=failed.reason, seconds=failed.seconds)
    if rec.status is not TrialStatus.FINISHED:  # TRIAL_INTERRUPTED
        return rec.replace(status=TrialStatus.INTERRUPTED, reason=str(ev.get("reason", "")))
    return rec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_PARENT_ENV = "NAS_LOCK_HELD_BY"  # set by the supervisor for its worker processes
SEARCH_T0_ENV = "NAS_SEARCH_STARTED"  # the supervisor's start time, so a worker's "elapsed" counts from it


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold LOCK while writing a run; a lock left by a dead process on this host is taken over."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(run.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(run.lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if pid and str(pid) == os.environ.get(LOCK_PARENT_ENV) and host == me["host"] and _pid_alive(int(pid)):
                yield  # a worker process of the supervisor that holds the lock: the lock stays the parent's
                return
            if pid and host == me["host"] and not _pid_alive(int(pid)) or not pid:
                run.lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            raise LockedRunError(
                f"{run.path}: run is locked by process {pid} on {host} (since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))}); "
                f"wait for it to finish or stop it, then run 'nas resume {run.path}'"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
            fh.flush()
            os.fsync(fh.fileno())
        break
    else:
        raise LockedRunError(f"{run.path}: could not take the run lock")
    try:
        yield
    finally:
        try:
            if json.loads(run.lock.read_text()).get("pid") == me["pid"]:
                run.lock.unlink()
        except (OSError, json.JSONDecodeError):
            pass
