"""The split: train/val/test, stratified, grouped, seeded, written once to split.csv with each file's size and
mtime, so a later resume or export can refuse data that changed under the run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from nas.data import Record
from nas.errors import NasError

SPLITS = ("train", "val", "test")


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


def make_folds(records: list[Record], splits: list[str], k: int, seed: int) -> list[int]:
    """Assign every train and val frame to one of k folds for cross-validated selection: stratified by label,
    whole groups in one fold when groups are given; test frames (and dropped ones) get -1."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    pool = [i for i, s in enumerate(splits) if s in ("train", "val")]
    labels = np.array([records[i].label for i in pool])
    groups = [records[i].group for i in pool]
    grouped = all(groups)
    if grouped and len(set(groups)) < k:
        raise NasError(f"objective.folds = {k} needs at least {k} groups outside the test split; the data has "
                       f"{len(set(groups))} there. Lower objective.folds, or add groups")
    if min(int(labels.sum()), int(len(labels) - labels.sum())) < k:
        raise NasError(f"objective.folds = {k} needs at least {k} frames of each class outside the test split")
    folds = [-1] * len(records)
    splitter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if grouped
                else StratifiedKFold(k, shuffle=True, random_state=seed))
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(pool)), labels, groups if grouped else None)):
        for j in held:
            folds[pool[j]] = fold
        if len(set(labels[held].tolist())) < 2:
            raise NasError(f"fold {fold} of {k} holds frames of one class only (groups are too few or too "
                           "unbalanced for that many folds); lower objective.folds")
    return folds


def write_split(path: Path, root: Path, records: list[Record], splits: list[str], positive: str, negative: str,
                folds: list[int] | None = None) -> None:
    """split.csv, written once: each frame's split (and fold) plus its size and mtime, so a resume can tell
    if it changed, and its pixel size (nm; empty when the file has none)."""
    tmp = path.with_suffix(".csv.tmp")
    folds = folds if folds is not None else [-1] * len(records)
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group", "fold", "bytes", "mtime_ns", "pixel_size_nm"])
        for r, s, k in zip(records, splits, folds, strict=True):
            st = (root / r.path).stat()
            pixel = f"{r.pixel_size_nm:.6g}" if r.pixel_size_nm else ""
            w.writerow([r.path, positive if r.label else negative, s, r.group, "" if k < 0 else k, st.st_size,
                        st.st_mtime_ns, pixel])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_split(path: Path, positive: str) -> tuple[list[Record], list[str], list[int]]:
    """Records, splits and folds (-1: none) of a split.csv."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    records = [Record(r["path"], int(r["label"] == positive), r["group"],
                      float(r["pixel_size_nm"]) if r.get("pixel_size_nm") else None) for r in rows]
    return records, [r["split"] for r in rows], [int(r["fold"]) if r.get("fold") else -1 for r in rows]


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

