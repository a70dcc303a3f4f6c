"""The data layer: scan a labelled folder, validate every frame, decode once into a memory-mapped cache,
split (stratified, grouped, seeded), and feed tf.data from the cache.

Every TIFF is decoded exactly once per preprocessing setting; trials, resumes and later runs read the cache.
All bad inputs are found here, before the first trial.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from nas.errors import NasError
from nas.preprocess import normalize_np

TIFF_SUFFIXES = (".tif", ".tiff")
ACCEPTED_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64, np.uint32, np.int32)
CACHE_VERSION = 2  # bump when preprocessing arithmetic changes
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One labelled frame. `path` is relative to the data root (posix), `label` is 1 for positive."""

    path: str
    label: int
    group: str = ""


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
            if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
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


def read_frame(path: str | Path) -> np.ndarray:
    """Read one single-frame grayscale TIFF as float64; raise NasError naming the file otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise NasError(f"{path}: empty file (0 bytes)")
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                raise NasError(f"{path}: a stack of {len(tif.pages)} frames; expected one grayscale frame")
            page = tif.pages[0]
            if page.samplesperpixel > 1:
                raise NasError(f"{path}: {page.samplesperpixel} samples per pixel (RGB/colour); expected one grayscale channel")
            data = page.asarray()
    except NasError:
        raise
    except FileNotFoundError:
        raise NasError(f"{path}: file not found") from None
    except Exception as exc:  # tifffile raises many types for damaged files
        raise NasError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    data = np.squeeze(data)
    if data.ndim != 2:
        raise NasError(f"{path}: image of shape {data.shape}; expected a 2-D grayscale frame")
    if data.dtype.type not in ACCEPTED_DTYPES:
        raise NasError(f"{path}: pixel type {data.dtype}; expected uint8, uint16, int16 or float32")
    if min(data.shape) < 8:
        raise NasError(f"{path}: frame of {data.shape[0]}x{data.shape[1]} px is too small; expected at least 8x8")
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise NasError(f"{path}: contains NaN or infinite values")
    if data.max() == data.min():
        raise NasError(f"{path}: constant image (every pixel {data.min():g}); nothing to classify")
    return data


@dataclass
class CachedData:
    """Preprocessed frames in a read-only memory map, row i belonging to records[i]."""

    frames: np.ndarray
    records: list[Record]
    skipped: list[tuple[str, str]]
    rebuilt: int
    directory: Path

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.float32)


def _identity(root: Path, rec: Record) -> str:
    st = (root / rec.path).stat()
    return f"{rec.path}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(root: Path, size: int, clip: Iterable[float]) -> str:
    text = json.dumps({"root": str(root.resolve()), "size": size, "clip": list(clip), "v": CACHE_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_cache(
    records: list[Record],
    root: str | Path,
    cache_root: str | Path,
    size: int,
    clip: tuple[float, float],
    *,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CachedData:
    """Decode and normalize every frame once into `cache_root/<key>/frames.npy`, reusing unchanged rows.

    A row is reused when the file's path, size and mtime match the cached entry; the new array is written
    beside the old one and renamed into place, so an interrupted build leaves the old cache intact.
    """
    root = Path(root)
    directory = Path(cache_root) / cache_key(root, size, clip)
    directory.mkdir(parents=True, exist_ok=True)
    index_path, frames_path = directory / "index.json", directory / "frames.npy"
    old_rows: dict[str, int] = {}
    old = None
    if index_path.is_file() and frames_path.is_file():
        try:
            old_rows = {ident: i for i, ident in enumerate(json.loads(index_path.read_text())["identities"])}
            old = np.load(frames_path, mmap_mode="r")
        except (ValueError, KeyError, OSError):
            old_rows, old = {}, None  # a damaged cache is rebuilt, never trusted
    identities = [_identity(root, r) for r in records]
    bad: dict[int, str] = {}
    todo = [i for i, ident in enumerate(identities) if ident not in old_rows]
    new_frames: dict[int, np.ndarray] = {}
    for done, i in enumerate(todo, start=1):
        try:
            new_frames[i] = normalize_np(read_frame(root / records[i].path), size, clip)
        except NasError as exc:
            if not skip_bad:
                raise
            bad[i] = str(exc)
        if progress:
            progress(done, len(todo))
    keep = [i for i in range(len(records)) if i not in bad]
    _check_duplicates(root, records, keep, new_frames, old, old_rows, identities)
    if not todo and old is not None and len(old_rows) == len(keep) and all(old_rows.get(identities[i]) == n for n, i in enumerate(keep)):
        frames = old  # nothing changed: reuse as is
    else:
        tmp = directory / f"frames.{os.getpid()}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keep), size, size))
        for row, i in enumerate(keep):
            out[row] = new_frames[i] if i in new_frames else old[old_rows[identities[i]]]
        out.flush()
        del out
        os.replace(tmp, frames_path)
        _write_json(index_path, {"identities": [identities[i] for i in keep], "size": size, "clip": list(clip)})
        frames = np.load(frames_path, mmap_mode="r")
    return CachedData(frames, [records[i] for i in keep], [(records[i].path, bad[i]) for i in sorted(bad)], len(todo) - len(bad), directory)


def _check_duplicates(root, records, keep, new_frames, old, old_rows, identities) -> None:
    """The same content under two labels would silently poison training and evaluation: refuse it."""
    seen: dict[bytes, int] = {}
    for i in keep:
        frame = new_frames[i] if i in new_frames else old[old_rows[identities[i]]]
        digest = hashlib.sha1(np.ascontiguousarray(frame).tobytes()).digest()
        if digest in seen:
            j = seen[digest]
            if records[j].label != records[i].label:
                raise NasError(f"{root / records[i].path}: same image content as {records[j].path}, but with the other label")
        seen[digest] = i


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def make_split(records: list[Record], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Assign train/val/test: stratified by label; whole groups stay together when groups are given."""
    rng = np.random.default_rng(seed)
    labels = np.array([r.label for r in records])
    assignment = np.empty(len(records), dtype=object)
    if all(r.group for r in records):
        groups = sorted({r.group for r in records})
        if len(groups) < 3:
            raise NasError(f"the data has {len(groups)} group(s); a grouped split needs at least 3 (one per split)")
        rng.shuffle(groups)
        by_group = {g: [i for i, r in enumerate(records) if r.group == g] for g in groups}
        targets = np.array(fractions) * len(records)
        counts = np.zeros(3)
        for k, g in enumerate(groups):  # each split first gets one group, then the split furthest below target
            split = k if k < 3 else int(np.argmax(targets - counts))
            assignment[by_group[g]] = SPLITS[split]
            counts[split] += len(by_group[g])
    else:
        for cls in (0, 1):
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            n_val = int(round(fractions[1] * len(idx)))
            n_test = int(round(fractions[2] * len(idx)))
            assignment[idx[:n_val]] = "val"
            assignment[idx[n_val : n_val + n_test]] = "test"
            assignment[idx[n_val + n_test :]] = "train"
    for split in SPLITS:
        got = set(labels[assignment == split].tolist())
        if got != {0, 1}:
            raise NasError(
                f"the {split} split has {'no' if not got else 'only one class of'} images "
                f"({len(records)} images in all); add images, or groups, or change data.split"
            )
    return assignment.tolist()


def write_split(path: Path, records: list[Record], splits: list[str], positive: str, negative: str) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group"])
        for r, s in zip(records, splits, strict=True):
            w.writerow([r.path, positive if r.label else negative, s, r.group])
    os.replace(tmp, path)


def read_split(path: Path, positive: str) -> tuple[list[Record], list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Record(r["path"], int(r["label"] == positive), r["group"]) for r in rows], [r["split"] for r in rows]


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 n_c), so a rare class counts as much as a common one."""
    n, pos = len(labels), float(labels.sum())
    return {0: n / (2 * (n - pos)), 1: n / (2 * pos)}


def make_dataset(frames: np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0):
    """tf.data over rows of the memory map: one batch in memory at a time; reshuffled every epoch."""
    import tensorflow as tf

    size = frames.shape[1]
    rows = np.asarray(rows)
    state = {"epoch": 0}

    def batches():
        order = rows.copy()
        if shuffle:
            np.random.default_rng([seed, state["epoch"]]).shuffle(order)
            state["epoch"] += 1
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield frames[chunk][..., None], labels[chunk][:, None]

    spec = (
        tf.TensorSpec((None, size, size, 1), tf.float32),
        tf.TensorSpec((None, 1), tf.float32),
    )
    n_batches = -(-len(rows) // batch_size)
    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)
