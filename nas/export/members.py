"""Which trials an export ships, and their networks: the best trial (or the one named, or the top K), each
with the weights that scored it. A cross-validated trial contributes its K fold models."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.errors import NasError
from nas.reopen import OpenRun
from nas.runlog import RunDir, read_trials
from nas.space import trial_values
from nas.trial import TrialRecord, rank_key

WEIGHTS = "best.weights.h5"


@dataclass(frozen=True)
class Member:
    """One trial in an export, with the weight files of its models (one, or one per fold)."""

    record: TrialRecord
    weights: tuple[Path, ...]

    @property
    def trial_id(self) -> str:
        return self.record.trial_id


def choose(run: RunDir, trial_id: str | None, ensemble: int) -> list[Member]:
    """The trials to export, best first: the one named, or the top `ensemble` by the search's own rule."""
    trials = read_trials(run.trials_log)
    if trial_id is not None:
        if trial_id not in trials:
            raise NasError(f"{run.path}: no trial {trial_id!r}; trials are {', '.join(sorted(trials)) or 'none'}")
        if not trials[trial_id].usable:
            raise NasError(f"{run.path}: trial {trial_id} is {trials[trial_id].shown_status}, not a finished feasible "
                           "trial; it has no model to export")
        chosen = [trials[trial_id]]
    else:
        ranked = sorted((t for t in trials.values() if t.usable), key=rank_key)
        if not ranked:
            raise NasError(f"{run.path}: no finished feasible trial to export yet; run or resume the search first")
        if ensemble > 1:  # only whole trials: racing leaves trials with fewer fold models, which cannot be averaged
            whole = [t for t in ranked if t.complete]
            partial = len(ranked) - len(whole)
            if len(whole) < ensemble:
                raise NasError(f"{run.path}: --ensemble {ensemble} needs {ensemble} finished feasible trials that trained "
                               f"every fold; the run has {len(whole)}"
                               + (f" ({partial} more raced out or cut short before their last fold)" if partial else ""))
            ranked = whole
        chosen = ranked[:ensemble]
    return [_member(run, rec) for rec in chosen]


def _member(run: RunDir, rec: TrialRecord) -> Member:
    folder = run.trial_dir(rec.trial_id)
    if rec.folds_total and (rec.folds_done or 0) < rec.folds_total:
        raise NasError(f"{run.path}: trial {rec.trial_id} trained {rec.folds_done} of {rec.folds_total} folds "
                       f"({rec.reason or 'cut short'}); export a trial that finished every fold")
    files = tuple(folder / f"fold-{k}" / WEIGHTS for k in range(rec.folds_total)) if rec.folds_total else (folder / WEIGHTS,)
    for path in files:
        if not path.is_file():
            raise NasError(f"{path}: best-epoch weights of trial {rec.trial_id} are missing")
    return Member(rec, files)


def image_size(opened: OpenRun, members: list[Member]) -> int:
    """The input size the members share (the search may have chosen it per trial)."""
    sizes = {int(m.record.hyperparameters.get("input.image_size", opened.exp.data.image_size)) for m in members}
    if len(sizes) > 1:
        raise NasError(f"the trials {', '.join(m.trial_id for m in members)} use different input sizes "
                       f"({', '.join(map(str, sorted(sizes)))}); an ensemble needs one size")
    return sizes.pop()


def architecture(opened: OpenRun, rec: TrialRecord, size: int, *, compiled: bool, frames: np.ndarray | None = None,
                 decay_steps: int = 0):
    """The trial's architecture, freshly initialised: our CNN families, or the AutoKeras graph it came from."""
    floor = opened.exp.objective.recall_floor
    if opened.exp.search.tuner == "autokeras":
        import keras_tuner

        from nas.automodel import AutoKerasHyperModel, adapt_preprocessing

        hp = keras_tuner.HyperParameters()
        hp.values.update(rec.hyperparameters)
        model = AutoKerasHyperModel(opened.space, size, floor).build(hp)
        if frames is not None:
            adapt_preprocessing(model, frames)
        return model
    from nas.models import build_model, build_network

    values = trial_values(opened.space, rec.hyperparameters)
    return build_model(values, size, floor, decay_steps) if compiled else build_network(values, size)


def network(opened: OpenRun, members: list[Member], size: int):
    """One Keras model in float32 (whatever precision trained it): the members' models with their scored
    weights, averaged when there are several. Returns it and each member's models (one per fold)."""
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")  # weights are float32 under either policy
    per_member: list[list] = []
    for member in members:
        per_member.append([])
        for k, path in enumerate(member.weights):
            model = architecture(opened, member.record, size, compiled=False)
            with warnings.catch_warnings():  # a compiled AutoKeras model warns that optimizer state is not loaded
                warnings.simplefilter("ignore", UserWarning)
                model.load_weights(path)  # best (or last) epoch, batch-norm statistics included
            model.name = f"trial_{member.trial_id}" + (f"_fold_{k}" if len(member.weights) > 1 else "")
            per_member[-1].append(model)
    models = [m for group in per_member for m in group]
    if len(models) == 1:
        return models[0], per_member
    inputs = keras.Input(models[0].input_shape[1:], name="frame")
    mean = keras.layers.Average(name="mean_probability")([m(inputs) for m in models])
    return keras.Model(inputs, mean, name="ensemble"), per_member
