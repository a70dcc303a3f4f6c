"""The data layer: scan a labelled folder, validate every frame, decode once into a memory-mapped cache,
split (stratified, grouped, seeded), and feed tf.data from the cache.

Every TIFF is decoded exactly once per preprocessing setting; trials, resumes and later runs read the cache.
All bad inputs are found here, before the first trial.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from nas.errors import NasError
from nas.preprocess import normalize_np

TIFF_SUFFIXES = (".tif", ".tiff")
MICROSCOPE_SUFFIXES = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd"}  # nas[formats]
FRAME_SUFFIXES = TIFF_SUFFIXES + tuple(MICROSCOPE_SUFFIXES)
ACCEPTED_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64, np.uint32, np.int32)
CACHE_VERSION = 4  # bump when preprocessing arithmetic changes
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


def _read_microscope_file(path: Path) -> np.ndarray:
    """A Gatan .dm3/.dm4 or Velox/NCEM .emd frame through rosettasciio (the optional nas[formats] extra)."""
    try:
        plugin = importlib.import_module(f"rsciio.{MICROSCOPE_SUFFIXES[path.suffix.lower()]}")
    except ImportError:
        raise NasError(f"{path}: reading {path.suffix} files needs the formats extra: pip install 'stem-nas[formats]'") from None
    signals = plugin.file_reader(str(path), lazy=False)
    images = [np.asarray(sig["data"]) for sig in signals if np.ndim(sig["data"]) >= 2]
    if not images:
        raise NasError(f"{path}: holds no image; expected one 2-D frame")
    if len(images) > 1:
        raise NasError(f"{path}: holds {len(images)} images; expected one frame per file")
    return images[0]


def read_frame(path: str | Path) -> np.ndarray:
    """Read one single-frame grayscale image in its own pixel type; raise NasError naming the file otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise NasError(f"{path}: empty file (0 bytes)")
        if path.suffix.lower() in MICROSCOPE_SUFFIXES:
            data = _read_microscope_file(path)
            if data.ndim == 3:
                raise NasError(f"{path}: a stack of {data.shape[0]} frames; expected one grayscale frame")
            return _check_pixels(path, data)
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
    except Exception as exc:  # readers raise many types for damaged files
        kind = "TIFF" if path.suffix.lower() in TIFF_SUFFIXES else f"{path.suffix} file"
        raise NasError(f"{path}: not a readable {kind} ({type(exc).__name__}: {exc})") from None
    return _check_pixels(path, data)


def _check_pixels(path: Path, data: np.ndarray) -> np.ndarray:
    data = np.squeeze(data)
    if data.ndim != 2:
        raise NasError(f"{path}: image of shape {data.shape}; expected a 2-D grayscale frame")
    if data.dtype.type not in ACCEPTED_DTYPES:
        raise NasError(f"{path}: pixel type {data.dtype}; expected uint8, uint16, int16 or float32")
    if min(data.shape) < 8:
        raise NasError(f"{path}: frame of {data.shape[0]}x{data.shape[1]} px is too small; expected at least 8x8")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise NasError(f"{path}: contains NaN or infinite values")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise NasError(f"{path}: constant image (every pixel {lo:g}); nothing to classify")
    return data


class FrameStore:
    """The cache's frames: a float32 .npy file of shape (n, size, size), read and written a row at a time
    with pread/pwrite. Unlike a memory map, pages it reads never count towards this process's memory, so
    resident memory holds only the rows asked for, however many frames the cache has."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            self.offset = fh.tell()
        if dtype != np.float32 or len(shape) != 3:
            raise ValueError(f"{path}: not a frame cache")
        self.shape = shape
        self.row_bytes = shape[1] * shape[2] * 4
        self.fd = os.open(self.path, os.O_RDONLY)

    @staticmethod
    def create(path: Path, n: int, size: int) -> RowWriter:
        """An empty store of n rows on disk, and a writer that fills it a row at a time."""
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, size, size)})
            offset = fh.tell()
            fh.truncate(offset + n * size * size * 4)
        return RowWriter(os.open(path, os.O_RDWR), offset, size * size * 4)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        for k, r in enumerate(rows):
            if not 0 <= r < self.shape[0]:
                raise IndexError(f"row {r} outside a cache of {self.shape[0]} frames")
            os.preadv(self.fd, [memoryview(out[k]).cast("B")], self.offset + int(r) * self.row_bytes)
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.read([index])[0]
        if isinstance(index, slice):
            return self.read(range(*index.indices(len(self))))
        return self.read(index)

    def __array__(self, dtype=None, copy=None):
        out = self.read(range(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __del__(self):
        try:
            os.close(self.fd)
        except (AttributeError, OSError):
            pass


@dataclass
class RowWriter:
    """Writes rows of a FrameStore file with pwrite; `close` makes them durable."""

    fd: int
    offset: int
    row_bytes: int

    def write(self, row: int, frame: np.ndarray) -> None:
        data = np.ascontiguousarray(frame, dtype=np.float32).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes; expected {self.row_bytes}")
        os.pwrite(self.fd, data, self.offset + row * self.row_bytes)

    def close(self, sync: bool = True) -> None:
        if self.fd < 0:
            return
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1


@dataclass
class CachedData:
    """Preprocessed frames in an on-disk store, row i belonging to records[i]."""

    frames: FrameStore
    records: list[Record]
    skipped: list[tuple[str, str]]
    rebuilt: int
    directory: Path
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (row, earlier row) of equal content

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.float32)


def identity(root: Path, rec: Record) -> str:
    """What must match for a cached row to be reused: path, size in bytes, modification time."""
    st = (root / rec.path).stat()
    return f"{rec.path}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(root: Path, size: int, clip: Iterable[float]) -> str:
    text = json.dumps({"root": str(root.resolve()), "size": size, "clip": list(clip), "v": CACHE_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame, dtype=np.float32).tobytes()).hexdigest()


def _decode(task: tuple[str, int, tuple[float, float]]) -> tuple[np.ndarray | None, str]:
    """Worker: read, validate and normalize one frame; a bad frame comes back as its error text."""
    path, size, clip = task
    try:
        return normalize_np(read_frame(path), size, clip), ""
    except NasError as exc:
        return None, str(exc)


PARALLEL_MIN = 64  # below this many frames to decode, worker start-up costs more than it saves


def _one_blas_thread() -> None:
    """Worker set-up: the processes are the parallelism; BLAS threads on top would fight over cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _decoded(tasks: list, workers: int) -> Iterator[tuple[np.ndarray | None, str]]:
    """Decode in order, in `workers` processes. A forkserver (not fork) is safe after TensorFlow is
    imported, and preloading this module there makes each worker start in milliseconds."""
    if workers <= 1 or len(tasks) < PARALLEL_MIN:
        yield from map(_decode, tasks)
        return
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["nas.data"])
    with ctx.Pool(workers, initializer=_one_blas_thread) as pool:
        yield from pool.imap(_decode, tasks, chunksize=16)


def build_cache(
    records: list[Record],
    root: str | Path,
    cache_root: str | Path,
    size: int,
    clip: tuple[float, float],
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CachedData:
    """Decode and normalize every frame once into `cache_root/<key>/frames.npy`, reusing unchanged rows.

    A row is reused when the file's path, size and mtime match the cached entry. Rows stream into a new
    file beside the old one (memory does not grow with the number of frames), which is renamed into
    place at the end, so an interrupted build leaves the old cache intact.
    """
    root = Path(root)
    directory = Path(cache_root) / cache_key(root, size, clip)
    directory.mkdir(parents=True, exist_ok=True)
    index_path, frames_path = directory / "index.json", directory / "frames.npy"
    old_rows: dict[str, int] = {}
    old_digests: list[str] = []
    old = None
    if index_path.is_file() and frames_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            old_rows = {ident: i for i, ident in enumerate(index["identities"])}
            old_digests = index["digests"]
            old = FrameStore(frames_path)
        except (ValueError, KeyError, OSError):
            old_rows, old = {}, None  # a damaged cache is rebuilt, never trusted
    identities = [identity(root, r) for r in records]
    todo = [i for i, ident in enumerate(identities) if ident not in old_rows]
    if not todo and old is not None and list(old_rows) == identities:
        return CachedData(old, list(records), [], 0, directory, _duplicates(root, records, old_digests, range(len(records))))
    workers = workers if workers is not None else max(1, min(os.cpu_count() or 1, 8))
    tmp = directory / f"frames.{os.getpid()}.tmp.npy"
    writer = FrameStore.create(tmp, len(records), size)
    digests: list[str] = [""] * len(records)
    bad: dict[int, str] = {}
    try:
        fresh = iter(zip(todo, _decoded([(str(root / records[i].path), size, clip) for i in todo], workers), strict=True))
        done = 0
        for i in range(len(records)):
            if identities[i] in old_rows:
                j = old_rows[identities[i]]
                writer.write(i, old[j])
                digests[i] = old_digests[j]
                continue
            _, (frame, error) = next(fresh)
            done += 1
            if error:
                if not skip_bad:
                    raise NasError(error)
                bad[i] = error
            else:
                writer.write(i, frame)
                digests[i] = _digest(frame)
            if progress:
                progress(done, len(todo))
        keep = [i for i in range(len(records)) if i not in bad]
        duplicates = _duplicates(root, records, digests, keep)
        if bad:  # compact: drop the rows of skipped frames, a row at a time
            writer.close()
            written = FrameStore(tmp)
            tmp2 = directory / f"frames.{os.getpid()}.tmp2.npy"
            compact = FrameStore.create(tmp2, len(keep), size)
            for row, i in enumerate(keep):
                compact.write(row, written[i])
            compact.close()
            del written
            os.replace(tmp2, tmp)
            position = {i: row for row, i in enumerate(keep)}
            duplicates = [(position[a], position[b]) for a, b in duplicates]
        writer.close()
    except BaseException:
        writer.close(sync=False)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, frames_path)
    _write_json(index_path, {"identities": [identities[i] for i in keep], "digests": [digests[i] for i in keep],
                             "size": size, "clip": list(clip)})
    return CachedData(FrameStore(frames_path), [records[i] for i in keep],
                      [(records[i].path, bad[i]) for i in sorted(bad)], len(todo) - len(bad), directory, duplicates)


def _duplicates(root: Path, records: list[Record], digests: list[str], keep: Iterable[int]) -> list[tuple[int, int]]:
    """Pairs of rows with identical content. Under two labels that would poison training: refused here."""
    seen: dict[str, int] = {}
    pairs = []
    for i in keep:
        j = seen.setdefault(digests[i], i)
        if j != i:
            if records[j].label != records[i].label:
                raise NasError(f"{root / records[i].path}: same image content as {records[j].path}, but with the other label")
            pairs.append((i, j))
    return pairs


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


def write_split(path: Path, root: Path, records: list[Record], splits: list[str], positive: str, negative: str) -> None:
    """split.csv, written once: each frame's split plus its size and mtime, so a resume can tell if it changed."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group", "bytes", "mtime_ns"])
        for r, s in zip(records, splits, strict=True):
            st = (root / r.path).stat()
            w.writerow([r.path, positive if r.label else negative, s, r.group, st.st_size, st.st_mtime_ns])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_split(path: Path, positive: str) -> tuple[list[Record], list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [Record(r["path"], int(r["label"] == positive), r["group"]) for r in rows], [r["split"] for r in rows]


def changed_since_split(path: Path, root: Path) -> list[str]:
    """Files of split.csv that are missing or whose size or mtime differ now: 'path (why)'."""
    changed = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            f = root / r["path"]
            if not f.is_file():
                changed.append(f"{r['path']} (missing)")
                continue
            st = f.stat()
            if "bytes" in r and (str(st.st_size) != r["bytes"] or str(st.st_mtime_ns) != r["mtime_ns"]):
                changed.append(f"{r['path']} (modified)")
    return changed


def require_unchanged(split_csv: Path, root: Path) -> None:
    """Refuse to continue a run whose frames changed since its split was written, naming the files."""
    changed = changed_since_split(split_csv, root)
    if changed:
        shown = "; ".join(changed[:10]) + (f"; and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise NasError(f"{root}: the data changed under this run ({len(changed)} files: {shown}); "
                       "restore the files or start a new run")


def balance(labels: np.ndarray, splits: np.ndarray) -> dict[str, dict[str, int]]:
    """Frames and positives per split."""
    return {s: {"n": int((splits == s).sum()), "positives": int(labels[splits == s].sum())} for s in SPLITS}


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 n_c), so a rare class counts as much as a common one."""
    n, pos = len(labels), float(labels.sum())
    return {0: n / (2 * (n - pos)), 1: n / (2 * pos)}


def augment_batch(x: np.ndarray, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """Microscopy augmentation of a batch (B, S, S) in [0, 1]; flips and 90-degree turns keep the label."""
    x = x.copy()
    b, s = x.shape[0], x.shape[1]
    if cfg.get("flips"):
        h, v = rng.random(b) < 0.5, rng.random(b) < 0.5
        x[h] = x[h][:, :, ::-1]
        x[v] = x[v][:, ::-1, :]
    if cfg.get("rot90"):
        turns = rng.integers(0, 4, b)
        for k in (1, 2, 3):
            x[turns == k] = np.rot90(x[turns == k], k, axes=(1, 2))
    if cfg.get("shift"):
        m = max(1, int(round(cfg["shift"] * s)))
        padded = np.pad(x, ((0, 0), (m, m), (m, m)), mode="edge")
        dy, dx = rng.integers(0, 2 * m + 1, (2, b))
        x = np.stack([padded[i, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
    if cfg.get("intensity"):
        a = cfg["intensity"]
        x = x * rng.uniform(1 - a, 1 + a, (b, 1, 1)) + rng.uniform(-a / 2, a / 2, (b, 1, 1))
    if cfg.get("noise"):
        x = x + rng.normal(0, 1, x.shape) * cfg["noise"] * np.sqrt(np.clip(x, 0, 1))
    return np.clip(x, 0, 1).astype(np.float32)


def epoch_batches(frames: FrameStore | np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int, *,
                  epoch: int, shuffle: bool, seed: int = 0, augment: dict | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch's batches (B, S, S, 1), (B, 1), one batch in memory at a time. The order and augmentation
    are a function of (seed, epoch) alone, so a resumed trial continues the sequence where it stopped."""
    order = np.asarray(rows).copy()
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
        epoch += 1
    rng = np.random.default_rng([seed, epoch, 7])
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        x = frames[chunk]
        if augment and any(augment.values()):
            x = augment_batch(x, rng, augment)
        yield x[..., None], labels[chunk][:, None].astype(np.float32)


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
