"""The watcher's record of truth: `decisions.jsonl`, one JSON line per frame, appended whole and fsynced.

A restart reads it back to know which frames are decided (so none is classified twice and none skipped),
drops a torn last line (a kill mid-append; that frame is then classified again, its row was never
complete), rebuilds the optional CSV from it, and re-places accepted and rejected files whose link a kill
interrupted. A row with `frames` = 0 records a file that could not be read: it is retried when it changes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nas.runlog import _fsync_dir, repair_log

FIELDS = ("time", "path", "frame", "frames", "probability", "decision", "threshold", "model_id", "latency_ms",
          "pixel_size_nm", "in_distribution", "drift", "error", "bytes", "mtime_ns")


class DecisionLog:
    """What has been decided, per file: the frames with a row, the file's size and mtime then, accepted or not."""

    def __init__(self, path: Path, csv_path: Path | None = None, recent: int = 200):
        self.path, self.csv_path = Path(path), Path(csv_path) if csv_path else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_log(self.path)
        self.frames: dict[str, set[int]] = {}  # decided frame indices per file
        self.state: dict[str, tuple[int, int]] = {}  # (bytes, mtime_ns) when last decided or last failed
        self.failed: set[str] = set()  # files whose last attempt could not read them
        self.accepted: dict[str, bool] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)  # latest classified rows (session statistics)
        self.rows = 0
        for row in self._read():
            self._note(row)
        if self.csv_path:
            self._rebuild_csv()

    def _read(self) -> Iterable[dict[str, Any]]:
        if not self.path.is_file():
            return
        with open(self.path) as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def _note(self, row: dict[str, Any]) -> None:
        path = row["path"]
        self.rows += 1
        self.state[path] = (int(row.get("bytes") or 0), int(row.get("mtime_ns") or 0))
        if not row.get("frames"):
            self.failed.add(path)
            return
        self.failed.discard(path)
        self.frames.setdefault(path, set()).add(int(row["frame"]))
        self.accepted[path] = self.accepted.get(path, False) or row.get("decision") == 1
        if row.get("probability") != "":
            self.recent.append(row)

    def decided(self, path: str) -> set[int]:
        return self.frames.get(path, set())

    def unchanged(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether a file was decided (or failed) in exactly this state: nothing new to do for it."""
        return self.state.get(path) == (size, mtime_ns)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """All rows in one write() with O_APPEND, then fsync: each line is whole or (torn last line) dropped."""
        if not rows:
            return
        data = "".join(json.dumps({k: row.get(k, "") for k in FIELDS}) + "\n" for row in rows).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for row in rows:
            self._note(row)
        if self.csv_path:  # derived from the log (rebuilt on restart), so no fsync of its own
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, FIELDS, extrasaction="ignore", lineterminator="\n").writerows(rows)

    def _rebuild_csv(self) -> None:
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self._read())
        os.replace(tmp, self.csv_path)


def place(src: Path, folder: Path, copy: bool = False) -> bool:
    """Put a decided file into the accept or reject folder: a hard link (instant, no extra space) or, across
    file systems or when asked, a copy written whole then renamed. Idempotent; False if the source is gone."""
    dst = folder / src.name
    if dst.exists():
        return True
    if not src.exists():
        return False
    if not copy:
        try:
            os.link(src, dst)
            return True
        except FileExistsError:
            return True
        except OSError:
            pass  # another file system, or links not allowed there: copy instead
    tmp = folder / f".{src.name}.{os.getpid()}.tmp"
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    _fsync_dir(folder)
    return True


def append_event(path: Path, event: dict[str, Any]) -> None:
    """One line of the watcher's own events (started, stopped, drift warning), fsynced like a decision."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
