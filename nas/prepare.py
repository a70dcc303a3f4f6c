"""A run's frames, ready for trials and export: the cache at every input size the search may use, the split
(and folds), and the training/validation rows of each fold.

A new run scans and validates the data, caches it, splits it and writes split.csv once; every later reader
(resume, a worker, export, report) reopens that split, refusing data that changed under the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas import cache as cache_mod
from nas import data as data_mod
from nas import splits as splits_mod
from nas.config import DataConfig
from nas.errors import NasError
from nas.runlog import RunDir

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FoldPlan:
    """What one fold trains on and is validated on (rows of the cache). Without cross-validation a trial
    has one plan: the train split, validated on the val split."""

    index: int
    train_rows: np.ndarray
    val_rows: np.ndarray


@dataclass
class RunFrames:
    """The run's cached frames (one store per input size), and each row's split and fold."""

    cached: cache_mod.CachedData  # at data.image_size: records, skipped frames, duplicates
    stores: dict[int, cache_mod.FrameStore]
    splits: np.ndarray
    folds: np.ndarray  # fold of a train/val row under cross-validation, else -1

    @property
    def labels(self) -> np.ndarray:
        return self.cached.labels

    @property
    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.cached.records])

    @property
    def cv(self) -> bool:
        return bool((self.folds >= 0).any())

    def rows(self, *names: str) -> np.ndarray:
        return np.flatnonzero(np.isin(self.splits, names))

    def plans(self) -> list[FoldPlan]:
        """The folds a trial trains: K under cross-validation (each validated on its held-out frames,
        trained on the other train+val frames), else one (train split, validated on the val split)."""
        if not self.cv:
            return [FoldPlan(0, self.rows("train"), self.rows("val"))]
        pool = self.rows("train", "val")
        return [FoldPlan(k, pool[self.folds[pool] != k], pool[self.folds[pool] == k])
                for k in range(int(self.folds.max()) + 1)]

    def validation_rows(self) -> np.ndarray:
        """The rows whose probabilities score a trial, in the order trials store them (fold by fold)."""
        return np.concatenate([p.val_rows for p in self.plans()])

    def test_shape(self) -> tuple[int, int]:
        """How many sessions and frames the test split holds: what a trial's interval is sized for."""
        rows = self.rows("test")
        return len(set(self.groups[rows].tolist()) - {""}), len(rows)

    def balance(self) -> dict[str, dict[str, int]]:
        return splits_mod.balance(self.labels, self.splits)


def _caches(records, root: Path, cache_root: Path, data: DataConfig, sizes: Iterable[int],
            progress: Progress | None) -> tuple[cache_mod.CachedData, dict[int, cache_mod.FrameStore]]:
    """One cache per input size (the search may choose the size per trial); every one drops the same bad
    frames, so their rows line up."""
    clip, frame = tuple(data.clip_percentiles), {"signal": data.signal, "pixel_size_nm": data.pixel_size_nm}
    main = cache_mod.build_cache(records, root, cache_root, data.image_size, clip, skip_bad=data.skip_bad, progress=progress,
                                 **frame)
    stores = {data.image_size: main.frames}
    for size in sorted(set(sizes) - {data.image_size}):
        other = cache_mod.build_cache(main.records, root, cache_root, size, clip, skip_bad=data.skip_bad, **frame)
        stores[size] = other.frames
    return main, stores


def split_new_run(run: RunDir, data: DataConfig, folds: int, cache_root: Path, *, sizes: Iterable[int] = (),
                  progress: Progress | None = None) -> RunFrames:
    """Scan, validate and cache the data, split it (and assign folds), and write split.csv once."""
    root = Path(data.path)
    records = data_mod.scan(root, data.positive, data.negative)
    cached, stores = _caches(records, root, cache_root, data, sizes, progress)
    splits = splits_mod.make_split(cached.records, tuple(data.split), data.seed)
    dropped = _duplicates_across_splits(cached, splits, root, data.skip_bad)
    splits = [s if i not in dropped else "dropped" for i, s in enumerate(splits)]
    fold_of = splits_mod.make_folds(cached.records, splits, folds, data.seed) if folds >= 2 else [-1] * len(splits)
    keep = [i for i in range(len(cached.records)) if i not in dropped]
    splits_mod.write_split(run.split, root, [cached.records[i] for i in keep], [splits[i] for i in keep],
                           data.positive, data.negative, [fold_of[i] for i in keep])
    cached.skipped.extend((cached.records[i].path, reason) for i, reason in sorted(dropped.items()))
    return RunFrames(cached, stores, np.array(splits), np.array(fold_of))


def reopen_frames(run: RunDir, data: DataConfig, cache_root: Path, *, sizes: Iterable[int] = (),
                  progress: Progress | None = None) -> RunFrames:
    """The frames of an existing run, from its split.csv; refuses data that changed since the split."""
    root = Path(data.path)
    splits_mod.require_unchanged(run.split, root)
    records, splits, folds = splits_mod.read_split(run.split, data.positive)
    cached, stores = _caches(records, root, cache_root, data, sizes, progress)
    kept = {r.path for r in cached.records}
    keep = [i for i, r in enumerate(records) if r.path in kept]
    return RunFrames(cached, stores, np.array([splits[i] for i in keep]), np.array([folds[i] for i in keep]))


def _duplicates_across_splits(cached: cache_mod.CachedData, splits: list[str], root: Path, skip: bool) -> dict[int, str]:
    """The same frame in two splits would leak evaluation data into training: refuse it, or drop the copy."""
    dropped = {}
    for i, j in cached.duplicates:
        if splits[i] != splits[j]:
            a, b = cached.records[i].path, cached.records[j].path
            if not skip:
                raise NasError(f"{root / a}: same image content as {b}, and the two fall in different splits "
                               f"({splits[i]}, {splits[j]}); remove one, give them one group, or set data.skip_bad")
            dropped[i] = f"duplicate of {b} (in the {splits[j]} split)"
    return dropped
