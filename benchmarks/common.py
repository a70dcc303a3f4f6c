"""Shared set-up for the benchmarks: a small search run and its export, made from demo data."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import resource
from pathlib import Path

import numpy as np
import tomli_w

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent


def nas(*args) -> str:
    """Run a `nas` command in this process; raise if it fails; return its standard output."""
    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"nas {' '.join(map(str, args))} failed:\n{err.getvalue()}")
    return out.getvalue()


def experiment(path: Path, data: Path, *, image_size: int = 64, space: str | Path = "small_cnn.yaml",
               batch_size: int = 32, **sections) -> Path:
    """A benchmark experiment file: random tuner over a space (a name in search_spaces/ or a path)."""
    space_path = Path(space) if Path(space).is_absolute() else REPO / "search_spaces" / space
    values = {"experiment": {"name": "bench"}, "data": {"path": str(data), "image_size": image_size},
              "search": {"space": str(space_path), "tuner": "random", "batch_size": batch_size}}
    for section, table in sections.items():
        values.setdefault(section, {}).update(table)
    path.write_text(tomli_w.dumps(values))
    return path


def small_run(work: Path, *, n: int = 120, size: int = 64, image_size: int = 32, trials: int = 1, epochs: int = 2,
              space: str = "small_cnn.yaml", export: bool = True) -> Path:
    """Demo data -> a short search -> (optionally) an export; returns the run folder."""
    data = work / "data"
    if not (data / "labels.csv").exists():
        nas("demo-data", data, "--n", n, "--size", size, "--seed", 11, "--groups", 6)
    exp = experiment(work / "bench.toml", data, image_size=image_size, space=space,
                     budget={"max_trials": trials, "epochs": epochs}, export={"bootstrap": 100})
    run_id = f"r{len(list((work / 'results' / 'bench').glob('*'))) if (work / 'results' / 'bench').exists() else 0}"
    nas("search", exp, "--results", work / "results", "--run-id", run_id)
    run = work / "results" / "bench" / run_id
    if export:
        nas("export", run)
    return run


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chosen_plans(frames, folds: str, run) -> list:
    """The folds a benchmark trains (`--folds 0,2`; empty: all) of a cross-validated run's frames."""
    if not frames.cv:
        raise SystemExit(f"{run}: not a cross-validated run (objective.folds >= 2)")
    plans = frames.plans()
    if not folds:
        return plans
    try:
        wanted = [int(f) for f in folds.split(",")]
    except ValueError:
        raise SystemExit(f"--folds {folds}: expected comma-separated fold numbers, e.g. 0,2") from None
    known = [p.index for p in plans]
    if set(wanted) - set(known):
        raise SystemExit(f"--folds {folds}: the run has folds {', '.join(map(str, known))}")
    return [p for p in plans if p.index in wanted]


def run_policy(opened) -> str:
    """The arithmetic the run's trials trained in (its precision.json), so a benchmark's times compare with theirs."""
    from nas import precision

    return precision.choose(opened.exp.search.precision, opened.run.path, opened.exp.data.image_size)["policy"]


def warm_start_epochs(values: dict, asked: int, exp) -> int:
    """Epochs a fold, as a benchmark trains the warm start: --epochs where asked, else the warm start's own
    training.epochs, else the run's budget.epochs."""
    return int(asked or values.get("training.epochs") or exp.budget.epochs)


def train_fold(frames, plan, values: dict, read: int, exp, epochs: int, seed: int, policy: str = "float32",
               average_from: int | None = None) -> dict:
    """One network trained on a fold's training frames as a trial trains it (the experiment's [augment] with the
    space's augment.* overrides, class weights, batch size, the cosine schedule over `epochs`, the arithmetic
    `policy`) and its probabilities on the fold's held-out frames: {"prob", "seconds", "params"}. With
    `average_from`, also "prob_avg": the same training's weights averaged over the ends of epochs average_from..
    epochs-1 (stochastic weight averaging, Izmailov et al. 2018), batch-norm statistics then re-estimated on one
    pass over the training batches (the averaged weights' own activations)."""
    import time

    import keras

    from nas import data as data_mod
    from nas import models, training
    from nas.augment import trial_augment

    models.fresh_session()
    keras.mixed_precision.set_global_policy(policy)  # clearing the session resets it (Keras 3)
    keras.utils.set_random_seed(seed)
    batch = exp.search.batch_size
    steps = training.steps_per_epoch(len(plan.train_rows), batch) * epochs
    model = models.build_model(values, read, exp.objective.recall_floor, steps)
    if exp.training.init_weights:  # as a trial starts: from these weights where the layers match
        from nas.search.fold import load_initial

        if not load_initial(model, Path(exp.training.init_weights)):
            raise SystemExit(f"training.init_weights {exp.training.init_weights}: another network's weights")
    store, labels = frames.stores[read], frames.labels
    augment = trial_augment(exp.augment, values)  # as a trial builds it
    weights = data_mod.loss_weights(exp.training.class_weight, labels, frames.groups, plan.train_rows)

    def batches(epoch: int):
        return data_mod.epoch_batches(store, labels, plan.train_rows, batch, epoch=epoch, shuffle=True, seed=seed,
                                      augment=augment, full=True, weights=weights)

    averager = weight_average(average_from) if average_from is not None else None
    start = time.perf_counter()
    training.fit_epochs(model, batches, None, epochs=epochs, callbacks=[averager] if averager else [])
    seconds = time.perf_counter() - start
    fit = {"prob": training.predict_rows(model, store, plan.val_rows, tta=bool(augment.get("tta"))),
           "seconds": seconds, "params": int(model.count_params())}
    if averager is not None:
        averager.apply(model, batches(epochs))
        fit["prob_avg"] = training.predict_rows(model, store, plan.val_rows, tta=bool(augment.get("tta")))
    return fit


def weight_average(first: int):
    """A callback keeping the running mean of a model's weights at the ends of epochs from `first` on (every
    weight, batch-norm statistics too); its `apply(model, batches)` puts the mean in the model and re-estimates
    the batch-norm statistics on those batches. Keras is imported here, after this module quiets TensorFlow."""
    import keras

    from nas.models import all_layers

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.count, self.total = 0, None

        def on_epoch_end(self, epoch, logs=None):
            if epoch >= first:
                weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
                self.total = weights if self.total is None else [t + w for t, w in zip(self.total, weights, strict=True)]
                self.count += 1

        def apply(self, model, batches) -> None:
            if not self.count:
                raise SystemExit(f"weight averaging from epoch {first}: no epoch reached it")
            current = model.get_weights()
            model.set_weights([(t / self.count).astype(w.dtype) for t, w in zip(self.total, current, strict=True)])
            norms = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
            momenta = [layer.momentum for layer in norms]
            try:
                for k, (x, *_) in enumerate(batches):
                    for layer in norms:
                        layer.momentum = k / (k + 1)  # a plain mean over the pass's batches
                    model(x, training=True)
            finally:
                for layer, momentum in zip(norms, momenta, strict=True):
                    layer.momentum = momentum

    return WeightAverage()


def each_run(runs, measure):
    """(run, measure(run)) for each run folder; a NasError (a run that cannot be read) ends the script with its
    one line."""
    from nas.errors import NasError

    for run in runs:
        try:
            yield run, measure(run)
        except NasError as e:
            raise SystemExit(str(e)) from None


def called_by_kind(y, kinds, called) -> dict:
    """Frames called positive at the threshold for each kind of frame demo data draws (labels.csv's `kind`:
    single, drift, defocused, aggregate, ...; a folder without that column has none), with its label: which
    negatives fool the model. On dev-W's magnification variant 124 of 162 drifted frames were called, the most
    of any kind of negative (README, "How the recommended experiment was chosen"); those it calls are mostly
    large particles whose smear is short beside them (under 0.3 of the diameter: 54 of 61 called), not long
    rod-like smears (38 of 82)."""
    out = {}
    for kind in sorted(set(kinds.tolist()) - {""}):
        for label, name in ((1, "positive"), (0, "negative")):
            mine = (kinds == kind) & (y == label)
            if mine.any():
                out[f"{kind} ({name})"] = {"frames": int(mine.sum()), "called": int(called[mine].sum())}
    return out


def frame_kinds(records, root: Path) -> np.ndarray:
    """Each cached frame's kind from ROOT/labels.csv's `kind` column (demo data's: single, drift, aggregate,
    ...), in the records' order; "" for a frame without one, or for every frame of a folder without the column."""
    table = root / "labels.csv"
    kind = {}
    if table.is_file():
        with open(table, newline="") as f:
            kind = {r["path"]: r.get("kind") or "" for r in csv.DictReader(f)}
    return np.array([kind.get(str(r.path), "") for r in records])
