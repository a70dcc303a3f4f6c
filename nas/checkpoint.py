"""Epoch checkpoints of the in-flight trial, so a resume loses at most the epoch that was running (or
`search.checkpoint_every_s` of training, when set).

A checkpoint is the model's weights and its optimizer's variables in one uncompressed `.npz`
(`ckpt-<epoch>.npz`), the best epoch's weights (`best-<epoch>.npz`), then `checkpoint.json` naming both
with the callbacks' state, written atomically last. A resume rebuilds the trial's model from its values
(the build is deterministic) and loads the arrays into it. Saving arrays costs a few milliseconds where a
full `.keras` archive cost ~70 ms an epoch (benchmarks/overhead.py: 7.5% of a tiny trial). Files carry
their epoch in the name and older ones are removed only after the JSON points past them, so a kill at
any instant leaves one consistent checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nas import stopping
from nas.models import PR_AUC_METRIC, PRECISION_METRIC
from nas.runlog import atomic_write_json
from nas.stopwatch import Stopwatch
from nas.trial import Event

CHECKPOINT = "checkpoint.json"


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The trial's last consistent checkpoint, or None if it has none (or a damaged one)."""
    path = folder / CHECKPOINT
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not all((folder / state.get(key) if state.get(key) else folder / "-").is_file() for key in ("model", "optimizer")):
        return None  # written by an older version, or damaged: the fold starts again
    return state


def save_arrays(path: Path, arrays: list) -> None:
    """Arrays into an .npz, whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, *arrays)
    tmp.replace(path)


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def optimizer_arrays(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.optimizer.variables]


def restore(model: keras.Model, folder: Path, state: dict[str, Any]) -> keras.Model:
    """Load a checkpoint's weights and optimizer state into a freshly built model of the same trial."""
    model.set_weights(load_arrays(folder / state["model"]))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    for variable, value in zip(optimizer.variables, load_arrays(folder / state["optimizer"]), strict=True):
        variable.assign(value)
    return model


def clear_checkpoint(folder: Path) -> None:
    """Remove a finished trial's epoch checkpoints (its best.weights.h5 stays)."""
    (folder / CHECKPOINT).unlink(missing_ok=True)
    for pattern in ("ckpt-*.npz", "opt-*.npz", "best-*.npz", ".*.tmp*"):
        for f in folder.glob(pattern):
            f.unlink(missing_ok=True)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counter survives a resume (Keras resets it in on_train_begin)."""

    def __init__(self, *args, restored: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.restored = restored

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored:
            self.wait = self.restored["wait"]
            self.best = self.restored["best"]
            self.best_epoch = self.restored.get("best_epoch", 0)

    def state(self) -> dict[str, Any]:
        best = None if self.best is None or not math.isfinite(float(self.best)) else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(getattr(self, "best_epoch", 0))}


class TrialProgress(keras.callbacks.Callback):
    """Per epoch: log the epoch, track the best epoch (when selecting on validation), write the checkpoint
    (at most every `every_s` seconds, and always before a stop), honour the deadline and a stop request."""

    def __init__(self, emit: Callable[..., None], trial_id: str, folder: Path, deadline: float | None, *,
                 early: ResumableEarlyStopping | None = None, restored: dict[str, Any] | None = None,
                 track_best: bool = True, fold: int | None = None, every_s: float = 0.0, clock: Stopwatch | None = None,
                 stops_at_deadline: Callable[[], bool] | None = None):
        super().__init__()
        self.stops_at_deadline = stops_at_deadline  # asked once the deadline has passed (None: always stop)
        self.emit, self.trial_id, self.folder, self.deadline, self.early = emit, trial_id, folder, deadline, early
        self.track_best, self.fold, self.every_s, self.clock = track_best, fold, every_s, clock or Stopwatch()
        self.best_key: tuple[float, float] | None = tuple(restored["best_key"]) if restored and restored.get("best_key") else None
        self.best_epoch = restored["best_epoch"] if restored else 0
        self.best_file = restored.get("best") if restored else None
        self.best_weights = None
        self.out_of_time = False
        self.stopped_by: str | None = None
        self.last_save = time.monotonic()

    def on_train_begin(self, logs=None):
        if self.best_file and (self.folder / self.best_file).is_file():
            self.best_weights = load_arrays(self.folder / self.best_file)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        where = {"fold": self.fold} if self.fold is not None else {}
        self.emit(Event.EPOCH, trial_id=self.trial_id, **where, epoch=epoch + 1, **logs)
        improved = self._track(epoch, logs)
        if self.deadline is not None and time.time() >= self.deadline and (
                self.stops_at_deadline is None or self.stops_at_deadline()):
            self.out_of_time = True
            self.model.stop_training = True
        if stopping.requested():
            self.stopped_by = stopping.requested()
            self.model.stop_training = True
        if self.model.stop_training or time.monotonic() - self.last_save >= self.every_s:
            with self.clock.phase("checkpoint"):
                self._save(epoch + 1, improved)
            self.last_save = time.monotonic()

    def _track(self, epoch: int, logs: dict[str, float]) -> bool:
        """Whether this epoch is the best so far by the val metric (then its weights are kept in memory)."""
        if not self.track_best:
            self.best_epoch = epoch + 1
            return False
        key = (logs.get(f"val_{PRECISION_METRIC}", 0.0), logs.get(f"val_{PR_AUC_METRIC}", 0.0))
        if not all(map(math.isfinite, key)):
            key = (-1.0, -1.0)
        if self.best_key is not None and key <= self.best_key:
            return False
        self.best_key, self.best_epoch = key, epoch + 1
        self.best_weights = self.model.get_weights()
        return True

    def _save(self, epoch: int, improved: bool) -> None:
        model_file, optimizer_file = f"ckpt-{epoch}.npz", f"opt-{epoch}.npz"
        save_arrays(self.folder / model_file, self.model.get_weights())
        save_arrays(self.folder / optimizer_file, optimizer_arrays(self.model))
        if self.best_weights is not None and self.best_epoch and self.best_file != f"best-{self.best_epoch}.npz":
            self.best_file = f"best-{self.best_epoch}.npz"
            save_arrays(self.folder / self.best_file, self.best_weights)
        atomic_write_json(self.folder / CHECKPOINT, {
            "epoch": epoch, "model": model_file, "optimizer": optimizer_file, "best": self.best_file,
            "best_epoch": self.best_epoch, "best_key": list(self.best_key) if self.best_key else None,
            "early_stopping": self.early.state() if self.early else None,
        })
        keep = {model_file, optimizer_file, self.best_file}
        for pattern in ("ckpt-*.npz", "opt-*.npz", "best-*.npz"):
            for old in self.folder.glob(pattern):
                if old.name not in keep:
                    old.unlink(missing_ok=True)
