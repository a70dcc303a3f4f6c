"""The frame cache: every frame decoded and normalized once per preprocessing setting into an on-disk store
that trials, resumes and later runs read a row at a time (resident memory does not grow with the data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nas.data import Record
from nas.drift import frame_features
from nas.errors import NasError
from nas.frames import read_frame_and_size
from nas.preprocess import normalize_np

CACHE_VERSION = 5  # bump when preprocessing arithmetic changes (5: per-frame pixel size and drift statistics)


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
    meta: list[dict] = field(default_factory=list)  # per row: pixel_size_nm (None: unknown), drift features

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.float32)


def identity(root: Path, rec: Record) -> str:
    """What must match for a cached row to be reused: path, size in bytes, modification time."""
    st = (root / rec.path).stat()
    return f"{rec.path}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(root: Path, size: int, clip: Iterable[float], signal: str = "", pixel_size_nm: float = 0.0) -> str:
    text = json.dumps({"root": str(root.resolve()), "size": size, "clip": list(clip), "v": CACHE_VERSION,
                       "signal": signal, "pixel_size_nm": pixel_size_nm})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame, dtype=np.float32).tobytes()).hexdigest()


def _decode(task: tuple[str, int, tuple[float, float], str, float]) -> tuple[np.ndarray | None, str, dict]:
    """Worker: read, validate and normalize one frame; a bad frame comes back as its error text. Also the
    frame's pixel size and its drift statistics (from the raw frame; see nas.drift)."""
    path, size, clip, signal, target = task
    try:
        frame, pixel = read_frame_and_size(path, signal)
    except NasError as exc:
        return None, str(exc), {}
    if target and not pixel:
        return None, (f"{path}: no pixel size in the file; data.pixel_size_nm = {target:g} resamples every frame to "
                      f"{target:g} nm per model pixel and needs one (set it to 0 to resize whole frames)"), {}
    meta = {"pixel_size_nm": pixel, "features": frame_features(frame, clip, pixel)}
    return normalize_np(frame, size, clip, pixel, target), "", meta


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
    ctx.set_forkserver_preload(["nas.cache"])
    with ctx.Pool(workers, initializer=_one_blas_thread) as pool:
        yield from pool.imap(_decode, tasks, chunksize=16)


@dataclass
class _OldCache:
    """The cache as it stands on disk: which file identities it holds, at which rows, with which digests."""

    store: FrameStore | None = None
    rows: dict[str, int] = field(default_factory=dict)
    digests: list[str] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)

    @staticmethod
    def read(directory: Path) -> _OldCache:
        index_path, frames_path = directory / "index.json", directory / "frames.npy"
        if not (index_path.is_file() and frames_path.is_file()):
            return _OldCache()
        try:
            index = json.loads(index_path.read_text())
            return _OldCache(FrameStore(frames_path), {ident: i for i, ident in enumerate(index["identities"])},
                             index["digests"], index["meta"])
        except (ValueError, KeyError, OSError):
            return _OldCache()  # a damaged cache is rebuilt, never trusted


def build_cache(records: list[Record], root: str | Path, cache_root: str | Path, size: int, clip: tuple[float, float], *,
                skip_bad: bool = False, workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                signal: str = "", pixel_size_nm: float = 0.0) -> CachedData:
    """Decode and normalize every frame once into `cache_root/<key>/frames.npy`, reusing unchanged rows.

    A row is reused when the file's path, size and mtime match the cached entry. Rows stream into a new
    file beside the old one (memory does not grow with the number of frames), which is renamed into
    place at the end, so an interrupted build leaves the old cache intact. `signal` picks the signal in
    files holding several; `pixel_size_nm` resamples to a physical scale (see nas.preprocess).
    """
    root = Path(root)
    directory = Path(cache_root) / cache_key(root, size, clip, signal, pixel_size_nm)
    directory.mkdir(parents=True, exist_ok=True)
    old = _OldCache.read(directory)
    identities = [identity(root, r) for r in records]
    todo = [i for i, ident in enumerate(identities) if ident not in old.rows]
    if not todo and old.store is not None and list(old.rows) == identities:
        return CachedData(old.store, _with_pixel_sizes(records, old.meta), [], 0, directory,
                          _duplicates(root, records, old.digests, range(len(records))), old.meta)
    workers = workers if workers is not None else max(1, min(os.cpu_count() or 1, 8))
    tmp = directory / f"frames.{os.getpid()}.tmp.npy"
    try:
        tasks = [(str(root / records[i].path), size, clip, signal, pixel_size_nm) for i in todo]
        digests, metas, bad = _write_rows(tmp, records, identities, todo, old, tasks, size, skip_bad, workers, progress)
        keep = [i for i in range(len(records)) if i not in bad]
        duplicates = _duplicates(root, records, digests, keep)
        if bad:
            _compact(tmp, keep, size)
            position = {i: row for row, i in enumerate(keep)}
            duplicates = [(position[a], position[b]) for a, b in duplicates]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    frames_path = directory / "frames.npy"
    os.replace(tmp, frames_path)
    kept_meta = [metas[i] for i in keep]
    _write_json(directory / "index.json", {"identities": [identities[i] for i in keep], "digests": [digests[i] for i in keep],
                                           "size": size, "clip": list(clip), "meta": kept_meta})
    return CachedData(FrameStore(frames_path), _with_pixel_sizes([records[i] for i in keep], kept_meta),
                      [(records[i].path, bad[i]) for i in sorted(bad)], len(todo) - len(bad), directory, duplicates,
                      kept_meta)


def _with_pixel_sizes(records: list[Record], meta: list[dict]) -> list[Record]:
    """Records carrying the pixel size read from their files (so that split.csv can record it)."""
    return [dataclasses.replace(r, pixel_size_nm=m.get("pixel_size_nm")) for r, m in zip(records, meta, strict=True)]


def _write_rows(tmp: Path, records: list[Record], identities: list[str], todo: list[int], old: _OldCache, tasks: list,
                size: int, skip_bad: bool, workers: int,
                progress: Callable[[int, int], None] | None) -> tuple[list[str], list[dict], dict[int, str]]:
    """Every row into a new store file, in order: copied from the old cache, or freshly decoded. Returns the
    rows' content digests, their meta (pixel size, drift features) and the bad frames (row -> why; raised
    unless skip_bad)."""
    writer = FrameStore.create(tmp, len(records), size)
    digests: list[str] = [""] * len(records)
    metas: list[dict] = [{}] * len(records)
    bad: dict[int, str] = {}
    done = 0
    try:
        fresh = iter(zip(todo, _decoded(tasks, workers), strict=True))
        for i in range(len(records)):
            if identities[i] in old.rows:
                j = old.rows[identities[i]]
                writer.write(i, old.store[j])
                digests[i], metas[i] = old.digests[j], old.meta[j]
                continue
            _, (frame, error, metas[i]) = next(fresh)
            done += 1
            if error and not skip_bad:
                raise NasError(error)
            if error:
                bad[i] = error
            else:
                writer.write(i, frame)
                digests[i] = _digest(frame)
            if progress:
                progress(done, len(todo))
    except BaseException:
        writer.close(sync=False)
        raise
    writer.close()
    return digests, metas, bad


def _compact(path: Path, keep: list[int], size: int) -> None:
    """Drop the rows of skipped frames from a store file, a row at a time."""
    written = FrameStore(path)
    tmp2 = path.with_name(path.name + ".compact.npy")
    compact = FrameStore.create(tmp2, len(keep), size)
    for row, i in enumerate(keep):
        compact.write(row, written[i])
    compact.close()
    del written
    os.replace(tmp2, path)


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

