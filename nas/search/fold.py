"""Training one fold of a trial: restore or build the model, train its epochs, keep its weights, and
predict its validation frames. A trial without cross-validation is one fold (train split, val split).

Everything a fold leaves behind lives in its folder: epoch checkpoints while it runs, then
`best.weights.h5` (the weights that score it) and `val_probs.npy` (its validation probabilities).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np

from nas import data as data_mod
from nas import training
from nas.checkpoint import (
    ResumableEarlyStopping,
    TrialProgress,
    load_arrays,
    load_checkpoint,
    restore,
    save_arrays,
)
from nas.config import TrainingConfig
from nas.errors import NasError
from nas.models import PR_AUC_METRIC
from nas.prepare import FoldPlan, RunFrames
from nas.search.interrupt import Interrupt, Reason
from nas.stopwatch import Stopwatch

WEIGHTS, PROBS = "best.weights.h5", "val_probs.npy"


@dataclass(frozen=True)
class FoldJob:
    """One fold of one trial, as the tuner planned it."""

    trial_id: str
    plan: FoldPlan
    folder: Path
    epochs: int
    initial_epoch: int
    seed: int
    image_size: int
    batch_size: int
    augment: dict[str, Any]
    select_best_epoch: bool  # on the fold's val frames; never under cross-validation (those frames score it)
    warm_from: Path | None = None  # Hyperband: the earlier round's weights of this fold
    init_weights: Path | None = None  # training.init_weights: where a fresh network with the same layers starts
    board: Path | None = None  # TensorBoard folder, if wanted
    checkpoint_every_s: float = 0.0


@dataclass
class FoldOutcome:
    """What a trained fold reports to its trial."""

    index: int
    prob: np.ndarray
    epochs_run: int
    best_epoch: int
    val_loss: float | None = None
    fit_seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)
    from_init: bool = False  # the network started from training.init_weights


class Started(NamedTuple):
    """A fold's model, ready to train: its first epoch, the checkpoint it was restored from (if any), and
    whether its network took training.init_weights."""

    model: keras.Model
    epoch: int
    checkpoint: dict | None
    from_init: bool


@dataclass
class FoldContext:
    """What every fold of a search shares: the frames, the training section, where events go, the deadline,
    and whether a trial stops at the deadline (asked with its id once the deadline has passed)."""

    frames: RunFrames
    training: TrainingConfig
    emit: Callable[..., None]
    deadline: float | None
    stops_at_deadline: Callable[[str], bool] = lambda trial_id: True


def finish_fold(started: Started, job: FoldJob, ctx: FoldContext, clock: Stopwatch) -> FoldOutcome:
    """Train a restored or built model, keep its weights, predict the val frames: the rest of a fold."""
    model, start = started.model, started.epoch
    before = clock.seconds.get("train", 0.0) + clock.seconds.get("validate", 0.0)
    history, progress = train(model, job, ctx, start, started.checkpoint, clock)
    with clock.phase("save"):
        keep_weights(model, progress, job.folder)
    with clock.phase("predict"):
        prob = training.predict_rows(model, ctx.frames.stores[job.image_size], job.plan.val_rows, tta=bool(job.augment.get("tta")))
        save_array(job.folder / PROBS, prob)
    val_loss, index = history.get("val_loss", []), progress.best_epoch - start - 1
    return FoldOutcome(job.plan.index, prob, start + len(history.get("loss", [])), progress.best_epoch,
                       float(val_loss[index]) if 0 <= index < len(val_loss) else None,
                       clock.seconds.get("train", 0.0) + clock.seconds.get("validate", 0.0) - before,
                       from_init=started.from_init)


def restore_or_build(job: FoldJob, build: Callable[[int], keras.Model]) -> Started:
    """The interrupted fold's last checkpoint (weights, optimizer and callback state), or a fresh model
    (warm-started from an earlier Hyperband round when the oracle says so, else from training.init_weights
    where its layers match)."""
    job.folder.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(job.folder)
    steps = -(-len(job.plan.train_rows) // job.batch_size) * (job.epochs - job.initial_epoch)
    model = build(steps)  # a cosine schedule spans this fold's own epochs, so every Hyperband rung ends at rate 0
    from_init = job.warm_from is None and job.init_weights is not None and load_initial(model, job.init_weights)
    if job.warm_from is None and job.init_weights is not None and not from_init:
        model = build(steps)  # a failed load may have filled some layers: start from a clean build
    if ckpt:  # a resumed fold: its checkpoint replaces every weight; whether it began from init_weights stays known
        return Started(restore(model, job.folder, ckpt), ckpt["epoch"], ckpt, from_init)
    if job.warm_from is not None:
        model.load_weights(job.warm_from)
    return Started(model, job.initial_epoch, None, from_init)


def load_initial(model: keras.Model, path: Path) -> bool:
    """Load training.init_weights into a fresh network if every layer matches; False (the network is then
    partly loaded and must be rebuilt) where it is another architecture. Two kinds of file: a `.weights.npz`
    holds the network's arrays in `get_weights()` order, as the trials' checkpoints do (nas.checkpoint; what
    `make pretrained` ships: no HDF5 in the tree), matched by every array's shape; a Keras `.weights.h5` (an
    earlier run's best.weights.h5) is matched by Keras by the layers' order and shapes, not their names. Either
    way a network saved at 48 px loads at 64 px: its convolutions and head do not depend on the frame size. The
    optimizer starts afresh by design (Keras warns that it skips the file's optimizer state: silenced)."""
    if path.name.endswith(".weights.npz"):
        arrays = load_arrays(path)
        if [a.shape for a in arrays] != [tuple(w.shape) for w in model.weights]:
            return False
        model.set_weights(arrays)
        return True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(path)
    except ValueError:
        return False
    return True


def ship_weights(run: Path, dst: Path) -> None:
    """`make pretrained`: the network of a finished one-trial run of a fixed space (experiments/pretrain.toml)
    as the .weights.npz that training.init_weights reads, its arrays only (no optimizer state): the network
    rebuilt from the run's frozen space, its best weights loaded, its arrays saved whole or not at all."""
    from nas.models import build_model
    from nas.reopen import reopen
    from nas.space import trial_values

    opened = reopen(run)
    src = opened.run.path / "trials" / "0" / WEIGHTS
    model = build_model(trial_values(opened.space, {}), opened.exp.data.image_size, opened.exp.objective.recall_floor)
    if not src.is_file() or not load_initial(model, src):
        raise NasError(f"{src}: no weights of the network of {opened.run.space} (a finished run of a fixed space?)")
    save_arrays(dst, model.get_weights())


def network_only(src: Path, dst: Path) -> None:
    """A copy of a .weights.h5 without its optimizer state: all that training.init_weights uses, a third of
    the file."""
    import h5py

    tmp = dst.with_name(dst.name + ".tmp")
    with h5py.File(src, "r") as f, h5py.File(tmp, "w") as g:
        for key, value in f.attrs.items():
            g.attrs[key] = value
        for key in f:
            if key != "optimizer":
                f.copy(key, g)
    os.replace(tmp, dst)


def train(model: keras.Model, job: FoldJob, ctx: FoldContext, start: int, ckpt: dict | None,
          clock: Stopwatch) -> tuple[dict[str, list[float]], TrialProgress]:
    """Train from `start` to the fold's last epoch; raise Interrupt if the budget or a stop cut it short
    (its last epoch is checkpointed), FloatingPointError if the loss diverged."""
    frames, labels, plan = ctx.frames.stores[job.image_size], ctx.frames.labels, job.plan
    weights = data_mod.loss_weights(ctx.training.class_weight, labels, ctx.frames.groups, plan.train_rows)
    patience = ctx.training.early_stopping_patience if job.select_best_epoch else 0
    early = ResumableEarlyStopping(monitor=f"val_{PR_AUC_METRIC}", mode="max", patience=patience,
                                   restored=(ckpt or {}).get("early_stopping")) if patience else None
    progress = TrialProgress(ctx.emit, job.trial_id, job.folder, ctx.deadline, early=early, restored=ckpt,
                             track_best=job.select_best_epoch, fold=None if job.select_best_epoch else plan.index,
                             every_s=job.checkpoint_every_s, clock=clock,
                             stops_at_deadline=lambda: ctx.stops_at_deadline(job.trial_id))
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), progress]
    if job.board is not None:
        callbacks.append(Timed(keras.callbacks.TensorBoard(log_dir=str(job.board), write_graph=False, profile_batch=0),
                               clock, "tensorboard"))
    if early:
        callbacks.append(early)

    def batches(epoch: int):
        return data_mod.epoch_batches(frames, labels, plan.train_rows, job.batch_size, epoch=epoch, shuffle=True,
                                      seed=job.seed, augment=job.augment, full=True, weights=weights)

    val = training.ValFrames(frames, plan.val_rows, labels[plan.val_rows]) if job.select_best_epoch else None
    history = training.fit_epochs(model, batches, val, epochs=job.epochs,
                         initial_epoch=start, callbacks=callbacks, clock=clock)
    losses = history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise FloatingPointError(f"loss became NaN or infinite at epoch {start + len(losses)}")
    if start + len(losses) < job.epochs and not (early is not None and early.stopped_epoch > 0):
        if progress.out_of_time:
            raise Interrupt(Reason.BUDGET)
        if progress.stopped_by:
            raise Interrupt(Reason.STOP, f"stopped by {progress.stopped_by}")
    return history, progress


def keep_weights(model: keras.Model, progress: TrialProgress, folder: Path) -> None:
    """The weights that score the fold (the best epoch's, or the last): into best.weights.h5 atomically."""
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    tmp = folder / "best.tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, folder / WEIGHTS)


def save_array(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, values)
    os.replace(tmp, path)


class Timed(keras.callbacks.Callback):
    """A callback whose hooks' time is added to a stopwatch phase (TensorBoard's cost, for the record)."""

    def __init__(self, inner: keras.callbacks.Callback, clock: Stopwatch, name: str):
        super().__init__()
        self.inner, self.clock, self.name = inner, clock, name

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)


def _forward(hook: str):
    def timed(self, *args, **kwargs):
        with self.clock.phase(self.name):
            return getattr(self.inner, hook)(*args, **kwargs)

    return timed


for _hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
              "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end"):
    setattr(Timed, _hook, _forward(_hook))
