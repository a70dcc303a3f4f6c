"""Shared set-up for the benchmarks: a small search run and its export, made from demo data."""

from __future__ import annotations

import contextlib
import io
import os
import resource
from pathlib import Path

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


def train_fold(frames, plan, values: dict, read: int, exp, epochs: int, seed: int, policy: str = "float32") -> dict:
    """One network trained on a fold's training frames as a trial trains it (the experiment's [augment] with the
    space's augment.* overrides, class weights, batch size, the cosine schedule over `epochs`, the arithmetic
    `policy`) and its probabilities on the fold's held-out frames: {"prob", "seconds", "params"}."""
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
    store, labels = frames.stores[read], frames.labels
    augment = trial_augment(exp.augment, values)  # as a trial builds it
    weights = data_mod.class_weights(labels[plan.train_rows]) if exp.training.class_weight == "auto" else None

    def batches(epoch: int):
        return data_mod.epoch_batches(store, labels, plan.train_rows, batch, epoch=epoch, shuffle=True, seed=seed,
                                      augment=augment, full=True)

    start = time.perf_counter()
    training.fit_epochs(model, batches, None, epochs=epochs, class_weight=weights)
    seconds = time.perf_counter() - start
    prob = training.predict_rows(model, store, plan.val_rows, tta=bool(augment.get("tta")))
    return {"prob": prob, "seconds": seconds, "params": int(model.count_params())}


def each_run(runs, measure):
    """(run, measure(run)) for each run folder; a NasError (a run that cannot be read) ends the script with its
    one line."""
    from nas.errors import NasError

    for run in runs:
        try:
            yield run, measure(run)
        except NasError as e:
            raise SystemExit(str(e)) from None
