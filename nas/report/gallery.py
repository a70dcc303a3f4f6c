"""The test split's mistakes and borderline frames: which frames to show, what export saves for them
(`test_predictions.csv`, `gallery.npz`), and their thumbnails.

Export scores the test split once and saves every prediction and the shown frames with their saliency, so
`nas report` redraws the gallery from those files and never runs a model on the test split again.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.errors import NasError
from nas.runlog import atomic_write_text

PREDICTIONS = "test_predictions.csv"
GALLERY = "gallery.npz"
GALLERY_MAX = 12  # mistakes shown per kind, most confident first: enough to see a pattern, small enough to mail
BORDERLINE = 6  # frames shown on each side of the threshold
KINDS = ("fp", "fn", "above", "below")
THUMB_MIN_PX = 96  # thumbnails are enlarged (nearest neighbour) to at least this many pixels a side


@dataclass(frozen=True)
class Predictions:
    """The test split as export scored it: one row per frame, in split order."""

    paths: list[str]
    labels: np.ndarray  # 1 = positive
    probs: np.ndarray

    def called(self, threshold: float) -> np.ndarray:
        """The decisions at a threshold, by the same rule as the model card (probability >= threshold)."""
        return self.probs >= threshold


def write_predictions(folder: Path, paths: list[str], labels: np.ndarray, probs: np.ndarray, threshold: float) -> None:
    """`test_predictions.csv`: path, label (1 = positive), probability (exact, repr) and decision."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "decision"])
    for path, y, p in zip(paths, labels, probs, strict=True):
        writer.writerow([path, int(y), repr(float(p)), int(float(p) >= threshold)])
    atomic_write_text(folder / PREDICTIONS, buf.getvalue())


def read_predictions(folder: Path) -> Predictions:
    path = folder / PREDICTIONS
    if not path.is_file():
        raise NasError(f"{path}: not found; this export predates the report's test predictions, "
                       "so run 'nas export RUN' again")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "probability"} - set(reader.fieldnames or [])
        if missing:
            raise NasError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected path,label,probability,decision")
        rows = list(reader)
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=int)
        probs = np.array([float(r["probability"]) for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise NasError(f"{path}: expected label 0/1 and a numeric probability on every row ({exc})") from None
    return Predictions([r["path"] for r in rows], labels, probs)


def select(labels: np.ndarray, probs: np.ndarray, threshold: float, cap: int = GALLERY_MAX,
           borderline: int = BORDERLINE) -> dict[str, np.ndarray]:
    """Indices to show, by kind: false positives (most confident first), false negatives (least confident
    first), and the frames nearest the threshold above it (called positive) and below it."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    called = probs >= threshold
    fp = np.flatnonzero(called & (labels == 0))
    fn = np.flatnonzero(~called & (labels == 1))
    above, below = np.flatnonzero(called), np.flatnonzero(~called)
    return {
        "fp": fp[np.argsort(-probs[fp], kind="stable")][:cap],
        "fn": fn[np.argsort(probs[fn], kind="stable")][:cap],
        "above": above[np.argsort(probs[above], kind="stable")][:borderline],
        "below": below[np.argsort(-probs[below], kind="stable")][:borderline],
    }


@dataclass(frozen=True)
class SavedGallery:
    """What export saved for the gallery: indices per kind into the predictions, and per shown frame its
    cached (normalized, resized) frame and its evidence maps for positive and for negative, as 8-bit images."""

    picks: dict[str, np.ndarray]
    shown: np.ndarray  # prediction indices of the frames below, sorted
    frames: np.ndarray  # uint8 (m, S, S)
    positive: np.ndarray  # uint8 (m, S, S): evidence for positive; both maps of a frame on one scale
    negative: np.ndarray  # uint8 (m, S, S): evidence for negative
    method: str
    cap: int
    borderline: int

    def frame_of(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(np.searchsorted(self.shown, index))
        return self.frames[k], self.positive[k], self.negative[k]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def save_gallery(folder: Path, picks: dict[str, np.ndarray], frames: np.ndarray, positive: np.ndarray,
                 negative: np.ndarray, method: str, cap: int, borderline: int) -> None:
    """`gallery.npz`, written whole or not at all. Frames and maps belong to the sorted union of picks."""
    shown = np.unique(np.concatenate([picks[k] for k in KINDS])).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, shown=shown, frames=to_uint8(frames), positive=to_uint8(positive),
                        negative=to_uint8(negative), method=np.array(method), cap=np.array(cap),
                        borderline=np.array(borderline),
                        **{f"pick_{k}": np.asarray(picks[k], dtype=np.int64) for k in KINDS})
    tmp = folder / f".{GALLERY}.{os.getpid()}.tmp"
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, folder / GALLERY)


def load_gallery(folder: Path, predictions: Predictions, threshold: float) -> SavedGallery:
    """The saved gallery, checked against the predictions: the same frames must be picked again."""
    path = folder / GALLERY
    if not path.is_file():
        raise NasError(f"{path}: not found; this export predates the mistakes gallery, so run 'nas export RUN' again")
    with np.load(path, allow_pickle=False) as z:
        saved = SavedGallery({k: z[f"pick_{k}"] for k in KINDS}, z["shown"], z["frames"], z["positive"], z["negative"],
                             str(z["method"]), int(z["cap"]), int(z["borderline"]))
    again = select(predictions.labels, predictions.probs, threshold, saved.cap, saved.borderline)
    if any(not np.array_equal(again[k], saved.picks[k]) for k in KINDS):
        raise NasError(f"{path}: its frames do not match {PREDICTIONS} at threshold {threshold:.6g}; "
                       "run 'nas export RUN' again")
    return saved


def _overlay(gray: np.ndarray, heat: np.ndarray, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    alpha = 0.7 * heat[..., None]  # weak evidence leaves the frame visible
    return (1 - alpha) * np.repeat(gray[..., None], 3, axis=2) + alpha * colormaps[cmap](heat)[..., :3]


def thumbnail(frame: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> bytes:
    """PNG of three panels: the frame; evidence for positive over it (red to yellow); evidence for negative
    over it (blue to green). Enlarged (nearest neighbour) to at least THUMB_MIN_PX a side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.image import imsave

    gray = frame.astype(np.float64) / 255
    panels = [np.repeat(gray[..., None], 3, axis=2), _overlay(gray, positive / 255, "autumn"),
              _overlay(gray, negative / 255, "winter")]
    gap = np.ones((gray.shape[0], max(1, gray.shape[1] // 32), 3))
    both = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    scale = max(1, -(-THUMB_MIN_PX // gray.shape[0]))
    both = np.repeat(np.repeat(both, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    imsave(buf, np.clip(both, 0, 1), format="png")
    return buf.getvalue()
