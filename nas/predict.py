"""Classify frames with an export: the SavedModel's own serving signature does normalization and threshold,
so results here equal what the microscope computer gets from the same SavedModel (see nas.classifier).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from nas.classifier import load_classifier
from nas.errors import NasError
from nas.frames import FRAME_SUFFIXES, frame_files

FIELDS = ("path", "frame", "probability", "decision", "pixel_size_nm", "in_distribution", "drift", "error")


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for frame files, in sorted order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(frame_files(p))
        elif p.exists():
            out.append(p)
        else:
            raise NasError(f"{p}: no such file or folder")
    if not out:
        raise NasError(f"no frames ({', '.join(FRAME_SUFFIXES)}) found in {', '.join(map(str, paths))}")
    return out


def predict(export: str | Path, paths: list[str | Path], *, threshold: float | None = None, batch: int = 16,
            signal: str | None = None, progress: Callable[[int, int], None] | None = None) -> Iterator[dict]:
    """Yield one row per frame (a series file gives one per frame), in order; a bad file or frame gets an
    error on its row and the rest go on. Only about one batch of frames is in memory at a time."""
    clf = load_classifier(export, threshold=threshold, signal=signal, batch=batch)
    files = expand_paths(paths)

    def counted() -> Iterator[Path]:
        for done, path in enumerate(files, start=1):
            yield path
            if progress:
                progress(done, len(files))

    yield from clf.classify_files(counted())


def write_csv(rows: Iterator[dict], out: Path | None, stream) -> dict[str, int]:
    """Write rows as CSV to a file (or the given stream) as they come; return counts."""
    counts = {"frames": 0, "positive": 0, "errors": 0, "unlike_training": 0}
    fh = open(out, "w", newline="") if out else stream
    try:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            counts["frames"] += 1
            counts["errors"] += bool(row["error"])
            counts["positive"] += row["decision"] == 1
            counts["unlike_training"] += row["in_distribution"] is False
    finally:
        if out:
            fh.close()
    return counts
