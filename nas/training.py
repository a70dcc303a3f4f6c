"""The epoch loop of a trial: Keras's callback protocol around train_on_batch / test_on_batch.

Why not model.fit: on a 2-core CPU, fit over a tf.data pipeline ran 6-10 s an epoch where the same steps
fed from numpy by train_on_batch ran 2.9 s (benchmarks/overhead.py measures it). tf.data's background
threads compete with the training threads for the two cores; this loop feeds batches synchronously.

Why every call has one shape: Keras traces a step function per input shape it meets, and fed from numpy a
short last batch is a new shape. Measured on the overhead benchmark's tiny model: the first training step
(the trace) 1.65 s, a later step 17 ms, the first step of a 4-frame last batch 0.85 s more; a 26-frame last
validation batch 0.44 s more. So training batches are all full (nas.data.epoch_batches tops the last one up)
and validation predicts in padded chunks of one size, the size every later prediction of the model uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from nas.augment import TTA_VIEWS, dihedral_views
from nas.stopwatch import Stopwatch

Batches = Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]]  # epoch -> that epoch's batches
REFIT_TRIAL = 99_991  # the seed slot of a refit on train+val, apart from every searched trial's
PREDICT_BATCH = 128  # frames (or frames x views) per prediction call: every call of a model has this shape


@dataclass(frozen=True)
class ValFrames:
    """The frames validated after each epoch: rows of a frame store and their labels."""

    frames: Any  # FrameStore or array (N, S, S)
    rows: np.ndarray
    labels: np.ndarray  # of those rows, 0/1


def trial_seed(search_seed: int, trial_id: str | int, fold: int = 0) -> int:
    """The seed of one trial's (one fold's) weights, shuffling and augmentation: distinct per trial and fold,
    the same on every resume."""
    return search_seed * 100_003 + int(trial_id) + 1_000_003 * fold


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return -(-n_rows // batch_size)


def fit_epochs(model: keras.Model, train: Batches, val: ValFrames | None, *, epochs: int, initial_epoch: int = 0,
               callbacks: list[keras.callbacks.Callback] = (), clock: Stopwatch | None = None) -> dict[str, list[float]]:
    """Train from initial_epoch to epochs, validating after each (unless val is None); returns the history
    (as History has it). A batch is (x, y) or (x, y, loss weights). Callbacks see what they see under fit:
    epoch and batch hooks, val_* logs, and model.stop_training. The clock, if given, splits the time into
    'train' and 'validate'."""
    clock = clock or Stopwatch()
    cbs = keras.callbacks.CallbackList(list(callbacks), model=model, add_history=False, add_progbar=False)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        model.reset_metrics()
        logs: dict[str, Any] = {}
        with clock.phase("train"):
            for step, (x, y, *w) in enumerate(train(epoch)):
                cbs.on_train_batch_begin(step)
                logs = model.train_on_batch(x, y, sample_weight=w[0] if w else None, return_dict=True)
                cbs.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            logs = {k: float(v) for k, v in logs.items()}
        if val is not None:
            with clock.phase("validate"):
                logs.update(_validate(model, val, cbs))
        model.reset_metrics()
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs if epochs > initial_epoch else None)
    return history


def _validate(model: keras.Model, val: ValFrames, cbs: keras.callbacks.CallbackList) -> dict[str, float]:
    """The val_* logs test_on_batch would give (the compiled loss and metrics over every val frame), computed
    from one prediction pass in the shape of every other one (see the module note)."""
    cbs.on_test_begin()
    model.reset_metrics()
    y = np.asarray(val.labels, np.float32)[:, None]
    prob = predict_rows(model, val.frames, val.rows)[:, None]
    logs = {k: float(v) for k, v in model.compute_metrics(None, y, prob).items()}
    logs["loss"] = float(model.compute_loss(None, y, prob, training=False))
    val_logs = {f"val_{k}": v for k, v in logs.items()}
    cbs.on_test_end(val_logs)
    return val_logs


def predict_rows(model: keras.Model, frames, rows: np.ndarray, tta: bool = False) -> np.ndarray:
    """Probabilities for rows of a frame store, fed synchronously like training, in calls of PREDICT_BATCH
    (a short last chunk is padded with its own first frame and the padding's outputs dropped: inference is per
    frame); with tta, the mean over each frame's 8 flips and turns."""
    rows = np.asarray(rows)
    step = PREDICT_BATCH // TTA_VIEWS if tta else PREDICT_BATCH
    out = []
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        n = len(chunk)
        if len(rows) > step and n < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], step - n)])
        x = frames[chunk][..., None]
        if tta:
            prob = np.asarray(model.predict_on_batch(dihedral_views(x))).reshape(TTA_VIEWS, -1).mean(axis=0)
        else:
            prob = np.asarray(model.predict_on_batch(x)).reshape(-1)
        out.append(prob[:n])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
