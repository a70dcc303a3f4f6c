"""Calibrate, refit, evaluate: the threshold from validation (or out-of-fold) probabilities, an optional
refit on train+val, and the one read of the test split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas import data as data_mod
from nas import training
from nas.augment import trial_augment
from nas.errors import NasError
from nas.export.members import Member, architecture
from nas.objective import (
    MIN_SESSIONS,
    Operating,
    bootstrap_interval,
    classification_report,
    expected_on_new_data,
    precision_at_recall,
)
from nas.prepare import RunFrames
from nas.reopen import OpenRun


@dataclass(frozen=True)
class Calibration:
    """The probabilities the threshold was chosen on, and the operating point."""

    split: str  # "val", or "oof": every train+val frame, scored by the fold model that did not train on it
    y: np.ndarray
    prob: np.ndarray
    groups: np.ndarray
    op: Operating
    rows: np.ndarray  # cache rows of y and prob, in their order
    drift_from_search: float | None = None  # largest |export - search| probability of a single member


def sessions_at_threshold(cal: Calibration, floor: float, confidence: float) -> dict | None:
    """Each session's recall at the threshold on the frames it was chosen on, and what the hardest one costs.
    Under the session rule the hardest session seen sets the threshold: on low-dose one out-of-fold session at
    the lowest dose of 16 held recall 0.899 there while the others held 0.98-1.00, and eight new sessions kept
    recall 1.000 at precision 0.70 (README, "Why the exports keep more recall..."). The card names that session
    and the threshold the same rule picks without it, so a user can judge whether it is a session they expect."""
    groups = np.asarray(cal.groups).astype(str)
    names = [g for g in np.unique(groups) if cal.y[groups == g].any()]
    if len(names) < MIN_SESSIONS:
        return None
    called, positive = cal.prob >= cal.op.threshold, cal.y == 1
    recall = {g: float(called[(groups == g) & positive].mean()) for g in names}
    hardest = min(recall, key=recall.get)
    rest = groups != hardest
    without = precision_at_recall(cal.y[rest], cal.prob[rest], floor, confidence, groups=groups[rest])
    on_rest = classification_report(cal.y[rest], cal.prob[rest], cal.op.threshold, floor)
    return {"split": cal.split, "recall": {g: round(r, 4) for g, r in recall.items()},
            "positives": {g: int((positive & (groups == g)).sum()) for g in names}, "hardest": hardest,
            "without_hardest": {"threshold": without.threshold, "reason": without.reason or None,
                                "precision_on_the_rest": round(float(without.precision), 4),
                                "precision_on_the_rest_at_this_threshold": round(float(on_rest["precision"]), 4)}}


def calibrate(opened: OpenRun, members: list[Member], net, fold_models: list[list], frames: RunFrames,
              size: int) -> Calibration:
    """The members' (mean) validation probabilities and the threshold the objective's rule picks on them,
    computed by the exported arithmetic (float32). Under cross-validation these are the pooled out-of-fold
    probabilities: each fold's frames scored by the fold model that did not train on them."""
    tta = opened.exp.augment.tta
    if frames.cv:
        rows = frames.validation_rows()
        store = frames.stores[size]
        prob = np.mean([np.concatenate([training.predict_rows(models[p.index], store, p.val_rows, tta=tta)
                                        for p in frames.plans()]) for models in fold_models], axis=0)
        split = "oof"
    else:
        rows = frames.rows("val")
        prob = training.predict_rows(net, frames.stores[size], rows, tta=tta)
        split = "val"
    objective, groups = opened.exp.objective, frames.groups[rows]
    op = precision_at_recall(frames.labels[rows], prob, objective.recall_floor, objective.recall_confidence, groups=groups)
    if op.reason:
        raise NasError(f"trial {members[0].trial_id}: cannot calibrate a threshold on {split} data: {op.reason}")
    return Calibration(split, frames.labels[rows], prob, groups, op, rows, _drift(opened, members, prob, frames.cv))


def _drift(opened: OpenRun, members: list[Member], prob: np.ndarray, cv: bool) -> float | None:
    """How far the exported arithmetic (float32) moves a single trial's probabilities from those its
    search scored (bfloat16 training, or none at all): the model card states it."""
    saved = opened.run.trial_dir(members[0].trial_id) / ("oof_probs.npy" if cv else "val_probs.npy")
    if len(members) > 1 or not saved.is_file():
        return None
    searched = np.load(saved)
    return float(np.max(np.abs(searched - prob))) if searched.shape == prob.shape else None


def refit(opened: OpenRun, member: Member, frames: RunFrames, size: int):
    """The architecture trained afresh on train+val for the trial's best number of epochs; returns the
    model and what the card says about it."""
    import keras

    from nas.models import fresh_session

    exp, rec = opened.exp, member.record
    epochs = int(rec.best_epoch or rec.epochs_run or exp.budget.epochs)
    rows = frames.rows("train", "val")
    store, labels, batch = frames.stores[size], frames.labels, exp.search.batch_size
    fresh_session()
    seed = training.trial_seed(exp.search.seed, training.REFIT_TRIAL)
    keras.utils.set_random_seed(seed)
    model = architecture(opened, rec, size, compiled=True, frames=store[rows[:256]][..., None],
                         decay_steps=training.steps_per_epoch(len(rows), batch) * epochs)
    if rec.from_init:  # as the trial trained: from training.init_weights
        from pathlib import Path

        from nas.search.fold import load_initial

        start = Path(exp.training.init_weights)
        if not start.is_file() or not load_initial(model, start):
            raise NasError(f"training.init_weights {start}: trial {rec.trial_id} started from this file, which is no "
                           "longer there or no longer fits its network; --refit needs the file the search used")
    augment = trial_augment(exp.augment, rec.hyperparameters)
    weights = data_mod.loss_weights(exp.training.class_weight, labels, frames.groups, rows)
    training.fit_epochs(model, lambda e: data_mod.epoch_batches(store, labels, rows, batch, epoch=e, shuffle=True,
                                                                seed=seed, augment=augment, full=True, weights=weights),
                        None, epochs=epochs)
    return model, {"on": "train+val", "epochs": epochs, "frames": int(len(rows)),
                   "note": "threshold chosen before refit, on the searched model's validation probabilities"}


def evaluate(net, frames: RunFrames, size: int, cal: Calibration, floor: float, resamples: int, seed: int,
             tta: bool = False) -> dict:
    """Figures at the calibrated threshold on the calibration split and on the test split (read here,
    once), with bootstrap intervals; also the test probabilities for the plots."""
    test_rows = frames.rows("test")
    # what the calibration data expects of a split like the test one, stated before the test split is read
    sessions, n_test = frames.test_shape()
    expected = expected_on_new_data(cal.y, cal.prob, cal.op.threshold, cal.groups, sessions=sessions, frames=n_test, seed=seed)
    p_test = training.predict_rows(net, frames.stores[size], test_rows, tta=tta)  # the one and only read of the test split
    y_test = frames.labels[test_rows]
    out = {}
    for name, y, p in ((cal.split, cal.y, cal.prob), ("test", y_test, p_test)):
        figures = classification_report(y, p, cal.op.threshold, floor)
        figures.update(bootstrap_interval(y, p, cal.op.threshold, resamples, seed=seed))
        out[name] = figures
    return {"metrics": out, "expected_on_test": expected, "y_test": y_test, "p_test": p_test, "test_rows": test_rows}
