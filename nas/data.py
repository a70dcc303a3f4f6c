"""Labelled frames: scan a folder (labels.csv or class folders) into records, and feed a trial its batches
from the frame cache (one batch in memory at a time, order and augmentation a function of seed and epoch).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nas.augment import augment_batch
from nas.errors import NasError
from nas.frames import FRAME_SUFFIXES

if TYPE_CHECKING:
    from nas.cache import FrameStore

@dataclass(frozen=True)
class Record:
    """One labelled frame. `path` is relative to the data root (posix), `label` is 1 for positive."""

    path: str
    label: int
    group: str = ""
    pixel_size_nm: float | None = None  # from the file, once the cache has read it


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def scan(root: str | Path, positive: str = "positive", negative: str = "negative") -> list[Record]:
    """List labelled frames from `root/labels.csv` (path,label[,group]) or from class folders."""
    root = Path(root)
    if not root.is_dir():
        raise NasError(f"{root}: data folder not found")
    labels_csv = root / "labels.csv"
    records = _scan_csv(root, labels_csv, positive, negative) if labels_csv.is_file() else _scan_folders(root, positive, negative)
    for cls, name in ((1, positive), (0, negative)):
        if not any(r.label == cls for r in records):
            where = labels_csv if labels_csv.is_file() else root / name
            raise NasError(f"{where}: class {name!r} has no images; both classes are needed")
    return records


def _scan_folders(root: Path, positive: str, negative: str) -> list[Record]:
    records = []
    for cls, name in ((1, positive), (0, negative)):
        folder = root / name
        if not folder.is_dir():
            raise NasError(f"{folder}: class folder not found (expected {root}/{positive}/ and {root}/{negative}/, or {root}/labels.csv)")
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES:
                records.append(Record(p.relative_to(root).as_posix(), cls))
    return records


def _scan_csv(root: Path, labels_csv: Path, positive: str, negative: str) -> list[Record]:
    with labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = {"path", "label"} - set(fields)
        if missing:
            raise NasError(f"{labels_csv}: missing column(s) {', '.join(sorted(missing))}; expected a header path,label[,group]")
        records, seen = [], set()
        for line, row in enumerate(reader, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not rel:
                raise NasError(f"{labels_csv}:{line}: empty path")
            path = root / rel
            if Path(rel).is_absolute() or not _inside(root, path):
                raise NasError(f"{labels_csv}:{line}: path {rel!r} is outside the data folder {root}")
            if label not in (positive, negative):
                raise NasError(f"{labels_csv}:{line}: unknown label {label!r}; expected {positive!r} or {negative!r}")
            if not path.is_file():
                raise NasError(f"{labels_csv}:{line}: image {rel!r} not found in {root}")
            key = Path(rel).as_posix()
            if key in seen:
                raise NasError(f"{labels_csv}:{line}: {rel!r} is listed twice")
            seen.add(key)
            records.append(Record(key, 1 if label == positive else 0, (row.get("group") or "").strip()))
    return records


def loss_weights(mode: str, labels: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Each frame's weight in the training loss (`training.class_weight`), as an array over all frames read at
    `rows` (0 elsewhere); None for `none`. The weights of the rows average 1.
      auto     the classes weigh the same: n / (2 n_c).
      session  within each session (group) the classes weigh the same, and each session keeps its share of
               the rows: n_g / (c_g n_gc), c_g the classes the session holds. Where sessions' positive shares
               differ (10-60% in a campaign), a network can learn a session's look (dose, magnification,
               detector) as a prior on the label, which no new session honours; within-session balance leaves
               the look nothing to predict. Frames without a group are one session; without groups at all,
               this is `auto`.
    """
    if mode == "none":
        return None
    rows = np.asarray(rows)
    y = np.asarray(labels)[rows].astype(int)
    cells = np.zeros(len(rows), int) if mode == "auto" else np.unique(np.asarray(groups)[rows], return_inverse=True)[1]
    weights = np.zeros(len(labels), np.float32)
    for cell in np.unique(cells):
        mine = cells == cell
        present = np.unique(y[mine])
        for c in present:
            members = mine & (y == c)
            weights[rows[members]] = mine.sum() / (len(present) * members.sum())
    return weights


def epoch_batches(frames: FrameStore | np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int, *,
                  epoch: int, shuffle: bool, seed: int = 0, augment: dict | None = None,
                  full: bool = False, weights: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """One epoch's batches (B, S, S, 1), (B, 1), one batch in memory at a time; with weights (an array over all
    frames, `loss_weights`), each batch's (B,) loss weights third. The order and augmentation
    are a function of (seed, epoch) alone, so a resumed trial continues the sequence where it stopped.
    With full, a short last batch is topped up with the epoch's first frames (as tf.data's repeat-then-batch
    would), so training steps all have one shape (nas.training's note: a new shape is a new trace)."""
    order = np.asarray(rows).copy()
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
        epoch += 1
    if full and len(order) > batch_size and len(order) % batch_size:
        order = np.concatenate([order, order[: batch_size - len(order) % batch_size]])
    rng = np.random.default_rng([seed, epoch, 7])
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        x = frames[chunk]
        if augment and any(augment.values()):
            x = augment_batch(x, rng, augment)
        batch = x[..., None], labels[chunk][:, None].astype(np.float32)
        yield batch if weights is None else (*batch, weights[chunk])


def make_dataset(frames: FrameStore | np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int, *, shuffle: bool,
                 seed: int = 0, augment: dict | None = None, first_epoch: int = 0):
    """tf.data over epoch_batches, reshuffled (and augmented, for training data only) every epoch; for
    prediction and export. Training uses epoch_batches directly (see nas.training)."""
    import tensorflow as tf

    size = frames.shape[1]
    state = {"epoch": first_epoch}

    def batches():
        yield from epoch_batches(frames, labels, rows, batch_size, epoch=state["epoch"], shuffle=shuffle, seed=seed,
                                 augment=augment)
        state["epoch"] += 1

    spec = (
        tf.TensorSpec((None, size, size, 1), tf.float32),
        tf.TensorSpec((None, 1), tf.float32),
    )
    n_batches = -(-len(rows) // batch_size)
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)
