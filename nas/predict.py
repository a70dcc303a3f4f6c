"""Classify TIFFs with an export: the SavedModel's own serving signature does normalization and threshold,
so results here equal what the microscope computer gets from the same SavedModel.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from nas.errors import NasError  # noqa: E402
from nas.export import SAVED_MODEL  # noqa: E402
from nas.frames import FRAME_SUFFIXES, read_frame  # noqa: E402

FIELDS = ("path", "probability", "decision", "error")


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for .tif/.tiff, in sorted order."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in FRAME_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise NasError(f"{p}: no such file or folder")
    if not out:
        raise NasError(f"no frames (.tif, .tiff, .dm3, .dm4, .emd) found in {', '.join(map(str, paths))}")
    return out


def load_export(export: str | Path):
    """The SavedModel's serving function and the model card."""
    import tensorflow as tf

    export = Path(export)
    card_path = export / "model_card.json"
    if not (export / SAVED_MODEL).is_dir() or not card_path.is_file():
        raise NasError(f"{export}: not an export folder (expected {SAVED_MODEL}/ and model_card.json); make one with 'nas export RUN'")
    loaded = tf.saved_model.load(str(export / SAVED_MODEL))
    return loaded, json.loads(card_path.read_text())


def predict(export: str | Path, paths: list[str | Path], *, threshold: float | None = None, batch: int = 16,
            progress: Callable[[int, int], None] | None = None) -> Iterator[dict]:
    """Yield one row per file, in order; a bad file gets an error on its row and the rest go on.

    Frames are batched while they share a shape; only one batch is in memory at a time.
    """
    import tensorflow as tf

    loaded, card = load_export(export)
    serve = loaded.signatures["serving_default"]
    cut = card["threshold"] if threshold is None else threshold
    files = expand_paths(paths)
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[dict]:
        if not pending:
            return
        frames = np.stack([f for _, f in pending]).astype(np.float32)
        prob = serve(frames=tf.constant(frames))["probability"].numpy()
        for (path, _), pr in zip(pending, prob, strict=True):
            yield {"path": str(path), "probability": float(pr), "decision": int(pr >= cut), "error": ""}
        pending.clear()

    for done, path in enumerate(files, start=1):
        try:
            frame = read_frame(path)
        except NasError as exc:
            yield from flush()
            yield {"path": str(path), "probability": "", "decision": "", "error": str(exc)}
        else:
            if pending and pending[0][1].shape != frame.shape:
                yield from flush()
            pending.append((path, frame))
            if len(pending) >= batch:
                yield from flush()
        if progress:
            progress(done, len(files))
    yield from flush()


def write_csv(rows: Iterator[dict], out: Path | None, stream) -> dict[str, int]:
    """Write rows as CSV to a file (or the given stream) as they come; return counts."""
    counts = {"frames": 0, "positive": 0, "errors": 0}
    fh = open(out, "w", newline="") if out else stream
    try:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            counts["frames"] += 1
            counts["errors"] += bool(row["error"])
            counts["positive"] += row["decision"] == 1
    finally:
        if out:
            fh.close()
    return counts
