"""`nas watch EXPORT DIR`: classify every frame that lands in a folder, once, as it lands.

A file is read when it is complete: the writer renamed it into the folder or closed it after writing
(inotify, through watchdog), or, on a network share (`--poll`, watchdog's polling observer), when its size
and mtime have not changed for `--settle` seconds. Frames ready together are classified in one batch with
the export's SavedModel (TensorFlow loaded once), their rows appended to `decisions.jsonl` in one fsynced
write (nas.decisions), then the files are linked into the accept or reject folder. A file that cannot be
read gets an error row and is retried when it changes. A restart goes on from the log; SIGINT and SIGTERM
finish the batch in hand and stop.
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas import decisions as decisions_mod
from nas import stopping
from nas.classifier import Classifier, Job, read_or_error
from nas.drift import SessionMonitor
from nas.errors import NasError
from nas.frames import FRAME_SUFFIXES

EVENTS_FILE = "watch_events.jsonl"


@dataclass
class WatchOptions:
    """How to watch: where decisions go, where decided files go, how completeness is judged."""

    decisions: Path | None = None  # default DIR/decisions.jsonl
    csv: Path | None = None
    accept_dir: Path | None = None
    reject_dir: Path | None = None
    copy: bool = False  # copy instead of hard-linking into the accept/reject folders
    poll: bool = False  # watchdog's polling observer (network shares, where inotify sees no remote writes)
    poll_interval: float = 1.0
    settle: float = 1.0  # seconds a file's size and mtime must stay put when no rename or close said it is done
    rescan: float = 10.0  # a full listing every so often as well: events can be lost (inotify queue overflow)
    once: bool = False  # classify what is in the folder, wait for it to settle, then exit


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time this size and mtime were first seen (latency counts from here)
    complete: bool  # the writer renamed the file into place or closed it


@dataclass
class Watcher:
    """The loop; `run` returns a summary. Callbacks get each decision row and each note (warnings)."""

    clf: Classifier
    folder: Path
    opts: WatchOptions
    on_row: Callable[[dict[str, Any]], None] = lambda row: None
    on_note: Callable[[str], None] = lambda text: None
    seen: dict[str, _Seen] = field(default_factory=dict)
    unchanged_since_read: dict[str, tuple[int, int]] = field(default_factory=dict)
    events: queue.Queue = field(default_factory=queue.Queue)
    stop: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"frames": 0, "positive": 0, "errors": 0, "unlike_training": 0})

    def __post_init__(self):
        self.folder = Path(self.folder).resolve()
        if not self.folder.is_dir():
            raise NasError(f"{self.folder}: no such folder to watch")
        for name, target in (("--accept-dir", self.opts.accept_dir), ("--reject-dir", self.opts.reject_dir)):
            if target is not None:
                if Path(target).resolve() == self.folder:
                    raise NasError(f"{name} {target}: must not be the watched folder (its files would be classified again)")
                Path(target).mkdir(parents=True, exist_ok=True)
        path = Path(self.opts.decisions or self.folder / "decisions.jsonl").resolve()
        self.log = decisions_mod.DecisionLog(path, self.opts.csv)
        self.events_path = path.parent / EVENTS_FILE
        self.own_files = {path, Path(self.opts.csv).resolve() if self.opts.csv else None}
        self.monitor = SessionMonitor(self.clf.reference, self.clf.threshold)
        self.monitor.warned = any(e.get("event") == "drift_warning" for e in decisions_mod.read_events(self.events_path))
        for row in self.log.recent:
            self.monitor.add(row["probability"], row.get("in_distribution") is False)

    def run(self) -> dict[str, Any]:
        """Watch until stopped (or, with `once`, until the folder's frames are decided)."""
        decisions_mod.append_event(self.events_path, {"event": "started", "time": round(time.time(), 3),
                                                      "folder": str(self.folder), "model_id": self.clf.model_id,
                                                      "threshold": self.clf.threshold, "decided_before": self.log.rows})
        self._reconcile_links()
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="nas-watch-reader")
        with _stop_signals(self):
            observer = None if self.opts.once else self._start_observer()
            try:
                self._loop()
            finally:
                self.reader.shutdown()
                if observer is not None:
                    observer.stop()
                    observer.join(timeout=5)
        reason = self.stop or "done"
        decisions_mod.append_event(self.events_path, {"event": "stopped", "time": round(time.time(), 3), "reason": reason,
                                                      **self.counts})
        return {**self.counts, "stopped_by": reason, "decisions": str(self.log.path)}

    def _loop(self) -> None:
        self._scan()
        next_scan = time.monotonic() + self.opts.rescan
        while self.stop is None:
            self._drain(0.0)
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + self.opts.rescan
            ready, wait = self._ready()
            if ready:
                self._process(ready)
                continue
            if self.opts.once and not self.seen:
                return
            self._drain(min(wait, 0.25))  # short, so a stop signal is seen promptly

    def _start_observer(self):
        from watchdog.observers.polling import PollingObserver

        handler = _Handler(self.events)
        try:
            if self.opts.poll:
                raise OSError("polling asked for")
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver(generate_full_events=True)  # a move in from elsewhere is a rename, not a create
            observer.schedule(handler, str(self.folder), recursive=False)
            observer.start()
        except (ImportError, OSError) as exc:
            if not self.opts.poll:
                self.on_note(f"file events unavailable ({exc}); polling every {self.opts.poll_interval:g} s instead")
            observer = PollingObserver(timeout=self.opts.poll_interval)
            observer.schedule(handler, str(self.folder), recursive=False)
            observer.start()
        return observer

    def _candidate(self, path: Path) -> bool:
        return (path.parent == self.folder and path.suffix.lower() in FRAME_SUFFIXES and not path.name.startswith(".")
                and path.suffix.lower() != ".emi" and path not in self.own_files)  # TIA frames are in the .ser files

    def _observe(self, path: Path, kind: str, when: float) -> None:
        if not self._candidate(path):
            return
        key = str(path)
        if kind == "deleted":
            self.seen.pop(key, None)
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self.seen.pop(key, None)
            return
        state = (st.st_size, st.st_mtime_ns)
        if self.log.unchanged(key, *state) or self.unchanged_since_read.get(key) == state:
            return  # decided (or failed) in exactly this state already
        prev = self.seen.get(key)
        complete = kind in ("renamed", "closed") or (kind == "scan" and time.time() - st.st_mtime >= self.opts.settle)
        if prev is not None and (prev.size, prev.mtime_ns) == state:
            prev.complete = prev.complete or complete
        else:
            self.seen[key] = _Seen(st.st_size, st.st_mtime_ns, when, complete)

    def _scan(self) -> None:
        now = time.monotonic()
        listed = set()
        for path in self.folder.iterdir():
            listed.add(str(path))
            self._observe(path, "scan", now)
        for key in [k for k in self.seen if k not in listed]:
            del self.seen[key]

    def _drain(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._observe(*item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _ready(self) -> tuple[list[str], float]:
        now = time.monotonic()
        ready = sorted((k for k, s in self.seen.items() if s.complete or now - s.since >= self.opts.settle),
                       key=lambda k: self.seen[k].since)
        waits = [self.opts.settle - (now - s.since) for s in self.seen.values() if not s.complete]
        return ready, max(min(waits, default=1.0), 0.01)

    def _process(self, ready: list[str]) -> None:
        """Classify ready files a batch at a time; while one batch is classified, the next is read in a
        second thread (TensorFlow releases the GIL while it computes)."""
        jobs, files = self._read_batch(ready)
        while jobs:
            self._drain(0.0)
            ahead = self.reader.submit(self._read_batch, self._ready()[0]) if self.stop is None else None
            self._record(self.clf.run(jobs), files)
            jobs, files = ahead.result() if ahead is not None else ([], [])

    def _read_batch(self, ready: list[str]) -> tuple[list[Job], list[Path]]:
        """Read ready files, up to about one batch of frames (never splitting a file), into jobs."""
        jobs: list[Job] = []
        files: list[Path] = []
        frames = 0
        for key in ready:
            seen = self.seen.pop(key, None)
            path = Path(key)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if seen is None:
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):  # still being written: wait again
                self.seen[key] = _Seen(st.st_size, st.st_mtime_ns, time.monotonic(), False)
                continue
            decided = self.log.decided(key)
            new = [j for j in self.clf.jobs(path, read_or_error(path, self.clf.signal))
                   if not j.row["frames"] or j.row["frame"] not in decided]
            if not new:
                self.unchanged_since_read[key] = (st.st_size, st.st_mtime_ns)
                continue
            for job in new:
                job.row.update(bytes=st.st_size, mtime_ns=st.st_mtime_ns, model_id=self.clf.model_id, since=seen.since)
            jobs.extend(new)
            files.append(path)
            frames += sum(j.frame is not None for j in new)
            if frames >= self.clf.batch:
                break
        return jobs, files

    def _record(self, rows: list[dict[str, Any]], files: list[Path]) -> None:
        now, wall = time.monotonic(), round(time.time(), 3)
        for row in rows:
            row["time"] = wall
            row["latency_ms"] = round((now - row.pop("since")) * 1000, 2)
        self.log.append(rows)
        for path in files:
            self._place(str(path))
        for row in rows:
            self.counts["frames"] += 1
            self.counts["errors"] += bool(row["error"])
            self.counts["positive"] += row["decision"] == 1
            self.counts["unlike_training"] += row["in_distribution"] is False
            self.on_row(row)
            if row["probability"] != "" and (why := self.monitor.add(row["probability"], row["in_distribution"] is False)):
                decisions_mod.append_event(self.events_path, {"event": "drift_warning", "time": wall, "reason": why})
                self.on_note(f"warning: this session moved away from validation: {why}")

    def _place(self, key: str) -> None:
        if key not in self.log.frames:
            return  # not read: nothing decided
        target = self.opts.accept_dir if self.log.accepted.get(key) else self.opts.reject_dir
        if target is not None:
            decisions_mod.place(Path(key), Path(target), self.opts.copy)

    def _reconcile_links(self) -> None:
        """A kill between a decision's row and its link leaves the link undone: do it now (idempotent)."""
        if self.opts.accept_dir is None and self.opts.reject_dir is None:
            return
        for key in list(self.log.frames):
            self._place(key)


class _Handler:
    """watchdog's callbacks, turned into (path, kind, time) items on the watcher's queue."""

    def __init__(self, events: queue.Queue):
        self.events = events

    def dispatch(self, event) -> None:
        if event.is_directory:
            return
        now = time.monotonic()
        kind = event.event_type
        if kind == "moved":
            if event.src_path:
                self.events.put((Path(event.src_path), "deleted", now))
            if event.dest_path:
                self.events.put((Path(event.dest_path), "renamed", now))
        elif kind in ("created", "modified", "closed", "deleted"):
            self.events.put((Path(event.src_path), kind, now))


def _stop_signals(watcher: Watcher):
    """SIGINT and SIGTERM ask the loop to stop after the batch in hand (main thread only)."""
    def handler(signum, frame):
        watcher.stop = signal.Signals(signum).name

    return stopping.handling(handler)


def decision_line(row: dict[str, Any]) -> str:
    """One decision as a line for the operator's terminal."""
    where = Path(row["path"]).name + (f"[{row['frame']}]" if row.get("frames", 1) > 1 else "")
    if row["error"]:
        return f"{where}  error: {row['error']}"
    unlike = f"  unlike training ({row['drift']})" if row["in_distribution"] is False else ""
    return (f"{where}  p={row['probability']:.4f}  {'ACCEPT' if row['decision'] == 1 else 'reject'}  "
            f"{row['latency_ms']:.0f} ms{unlike}")


def watch(export: str | Path, folder: str | Path, opts: WatchOptions, *, threshold: float | None = None,
          signal_name: str | None = None, batch: int = 16, on_row=None, on_note=None) -> dict[str, Any]:
    """Load the export once and watch the folder; returns the session's counts and why it stopped."""
    from nas.classifier import load_classifier

    clf = load_classifier(export, threshold=threshold, signal=signal_name, batch=batch)
    clf.warm_up()
    watcher = Watcher(clf, Path(folder), opts, on_row or (lambda row: None), on_note or (lambda text: None))
    return watcher.run()
