"""The search driver: prepare a run, build the tuner, run trials that report the exact objective.

KerasTuner's oracles (random, Bayesian, Hyperband) propose hyperparameters; NasTuner.run_trial trains,
keeps the best epoch's weights, scores the trial exactly from its validation probabilities, writes the
trial's files and its events, and reports one number back to the oracle. The search never reads the
test split.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging as tf_logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
from keras_tuner.src import utils as kt_utils  # noqa: E402
from keras_tuner.src.engine import base_tuner  # noqa: E402

from nas import cache as cache_mod  # noqa: E402
from nas import config as config_mod  # noqa: E402
from nas import data as data_mod  # noqa: E402
from nas import splits as splits_mod  # noqa: E402
from nas import stopping  # noqa: E402
from nas.automodel import AutoKerasHyperModel, adapt_preprocessing  # noqa: E402
from nas.checkpoint import ResumableEarlyStopping, TrialProgress, clear_checkpoint, load_checkpoint  # noqa: E402
from nas.errors import NasError, Recycled, Stopped  # noqa: E402
from nas.models import PR_AUC_METRIC, SpaceHyperModel, build_model  # noqa: E402
from nas.objective import objective_interval, oracle_score, precision_at_recall, tie_break_value  # noqa: E402
from nas.runlog import (  # noqa: E402
    RunDir,
    append_event,
    atomic_write_text,
    create_run,
    read_events,
    repair_log,
    run_lock,
    trial_records,
)
from nas.space import SearchSpace, load_space, parse_space  # noqa: E402
from nas.training import fit_epochs, predict_rows  # noqa: E402

OBJECTIVE = keras_tuner.Objective("score", direction="max")
EventSink = Callable[[dict[str, Any]], None]
CACHE_FOLDER = ".cache"


class BudgetExhausted(keras_tuner.errors.FatalError):
    """The time budget ran out; the in-flight trial stays open in the oracle so resume continues it."""


class RecycleWorker(keras_tuner.errors.FatalError):
    """This worker process ran its share of trials; a fresh process continues the search."""


class SearchStopped(keras_tuner.errors.FatalError):
    """Ctrl-C or SIGTERM: the current epoch was finished and checkpointed; resume continues from it."""


def _atomic_save_json(path, obj) -> str:
    """KerasTuner writes its oracle and trial JSON in place; a kill mid-write would truncate it."""
    text = json.dumps(obj)
    atomic_write_text(path, text)
    return text


kt_utils.save_json = _atomic_save_json  # every KerasTuner state file goes through this function
tf_logging.getLogger("tensorflow").setLevel(tf_logging.ERROR)  # retracing notices are not for the user
warnings.filterwarnings("ignore", module="sklearn.gaussian_process")  # the Bayesian oracle's GP fit chatter


@dataclass
class TrialData:
    """What every trial trains and validates on: rows of the frame cache (the test rows are not used)."""

    frames: cache_mod.FrameStore
    labels: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    class_weight: dict[int, float] | None
    augment: dict[str, Any] | None = None


def current_rss_mb() -> float:
    """This process's resident memory now (Linux /proc; peak RSS elsewhere), for the per-trial record."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure_latency_ms(model: keras.Model, image_size: int, repeats: int = 20) -> float:
    """Median wall time of one forward pass at batch 1 on this machine, in milliseconds."""
    x = np.zeros((1, image_size, image_size, 1), np.float32)
    predict = _compiled(model)
    for _ in range(3):
        predict(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _compiled(model: keras.Model):
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: fn(x).numpy()


class NasTuner(base_tuner.BaseTuner):
    """A KerasTuner tuner whose trials report the exact validation precision at the recall floor."""

    def __init__(self, oracle, hypermodel: SpaceHyperModel, run: RunDir, exp: config_mod.Experiment,
                 data: TrialData, emit: Callable[..., None], deadline: float | None, stop_after: int | None = None):
        self.run, self.exp, self.data, self.emit, self.deadline = run, exp, data, emit, deadline
        self.stop_after, self.trials_run = stop_after, 0
        # trials our log already calls finished: if the tuner re-runs one (a kill between our log line and
        # its own state file), report the logged score instead of training it again
        self.logged = _finished_in_log(run)
        super().__init__(oracle, hypermodel, directory=str(run.tuner), project_name="search", overwrite=False)

    def pre_create_trial(self):
        if self.deadline is not None and time.time() >= self.deadline:
            raise BudgetExhausted("time budget reached")
        if stopping.requested():
            raise SearchStopped(f"stopped by {stopping.requested()}")
        if self.stop_after and self.trials_run >= self.stop_after and self.oracle.remaining_trials() != 0:
            raise RecycleWorker(f"{self.trials_run} trials run in this worker process")

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run += 1

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        exp = self.exp
        hp = trial.hyperparameters
        tid = trial.trial_id
        keras.backend.clear_session()
        keras.utils.set_random_seed(exp["search"]["seed"] * 100_003 + int(tid))
        values = self.hypermodel.space.resolve(hp)
        searched = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}  # AutoKeras adds its own
        fidelity = {k[len("tuner/"):]: v for k, v in hp.values.items() if k.startswith("tuner/")}
        epochs = int(fidelity.get("epochs", exp["budget"]["epochs"]))
        initial_epoch = int(fidelity.get("initial_epoch", 0))
        self.logged.update(_finished_in_log(self.run))  # other workers write this log too
        if tid in self.logged:
            return {"score": _score(self.logged[tid])}
        tdir = self.run.trial_dir(tid)
        tdir.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(tdir)
        self.emit("trial_started", trial_id=tid, hyperparameters=searched, fidelity=fidelity, epochs=epochs,
                  resumed_from_epoch=ckpt["epoch"] if ckpt else 0, pid=os.getpid(), tuner_id=self.tuner_id)
        t0 = time.perf_counter()
        try:
            with _strategy_scope(exp["search"]["distribution"]):
                if ckpt:  # continue the interrupted trial: weights, optimizer state, callback state
                    model = keras.saving.load_model(tdir / ckpt["model"])
                    initial_epoch = ckpt["epoch"]
                else:
                    model = self._build(hp, values)
                    if "trial_id" in fidelity:  # Hyperband: continue from the earlier round's best weights
                        model.load_weights(self.run.trial_dir(fidelity["trial_id"]) / "best.weights.h5")
                infeasible, latency = self._over_limits(model)
                if infeasible:
                    outcome = infeasible
                else:
                    outcome = self._fit_and_score(model, values, tid, epochs, initial_epoch, ckpt, latency)
        except (BudgetExhausted, SearchStopped) as exc:
            self.emit("trial_interrupted", trial_id=tid, reason=f"{exc} during the trial; its last epoch is checkpointed")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()[:2000]
            self.emit("trial_failed", trial_id=tid, reason=reason, seconds=round(time.perf_counter() - t0, 3))
            raise keras_tuner.errors.FailedTrialError(reason) from exc
        outcome.update(trial_id=tid, hyperparameters=searched, fidelity=fidelity, seconds=round(time.perf_counter() - t0, 3),
                       rss_mb=current_rss_mb(), pid=os.getpid())
        self.emit("trial_finished", **outcome)
        self.logged[tid] = outcome
        clear_checkpoint(tdir)
        return {"score": _score(outcome)}

    def _build(self, hp, values: dict[str, Any]) -> keras.Model:
        if isinstance(self.hypermodel, AutoKerasHyperModel):
            model = self.hypermodel.build(hp)
            sample = self.data.frames[self.data.train_rows[:256]][..., None]
            adapt_preprocessing(model, sample)
            return model
        hm = self.hypermodel
        return build_model(values, hm.image_size, hm.recall_floor, hm.decay_steps)

    def _over_limits(self, model: keras.Model) -> tuple[dict[str, Any] | None, float | None]:
        """Check the constraints before training: an architecture over a limit is infeasible whatever it
        would learn, so it is recorded (with why) without spending training time on it. Returns that record
        (or None) and the latency if it was measured, which training does not change."""
        limits = self.exp["constraints"]
        if not (limits["max_params"] or limits["max_latency_ms"]):
            return None, None
        params = int(model.count_params())
        latency = measure_latency_ms(model, self.data.frames.shape[1]) if limits["max_latency_ms"] else None
        reasons = []
        if limits["max_params"] and params > limits["max_params"]:
            reasons.append(f"{params} parameters > max_params {limits['max_params']}")
        if latency is not None and latency > limits["max_latency_ms"]:
            reasons.append(f"{latency:.2f} ms/frame > max_latency_ms {limits['max_latency_ms']:g}")
        if not reasons:
            return None, latency
        return {"objective": 0.0, "tie_break": 0.0, "feasible": False, "reason": "infeasible: " + "; ".join(reasons),
                "params": params, "latency_ms": latency, "epochs_run": 0, "threshold": None, "recall": None,
                "pr_auc": None, "split": "val"}, latency

    def _fit_and_score(self, model: keras.Model, values: dict[str, Any], tid: str, epochs: int, initial_epoch: int,
                       ckpt: dict[str, Any] | None, latency: float | None = None) -> dict[str, Any]:
        exp, data = self.exp, self.data
        batch = exp["search"]["batch_size"]
        seed = exp["search"]["seed"] * 100_003 + int(tid)
        def train(epoch: int):
            return data_mod.epoch_batches(data.frames, data.labels, data.train_rows, batch, epoch=epoch, shuffle=True,
                                          seed=seed, augment=data.augment)

        def val(epoch: int):
            return data_mod.epoch_batches(data.frames, data.labels, data.val_rows, batch, epoch=0, shuffle=False)

        patience = exp["training"]["early_stopping_patience"]
        early = ResumableEarlyStopping(monitor=f"val_{PR_AUC_METRIC}", mode="max", patience=patience,
                                       restored=(ckpt or {}).get("early_stopping")) if patience else None
        log = TrialProgress(self.emit, tid, self.run.trial_dir(tid), self.deadline, early, restored=ckpt)
        board = self.run.path / "tensorboard" / tid
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.TerminateOnNaN(), log,
            keras.callbacks.TensorBoard(log_dir=str(board), write_graph=False, profile_batch=0),
        ]
        if early:
            callbacks.append(early)
        fit_t0 = time.perf_counter()
        history = fit_epochs(model, train, val, epochs=epochs, initial_epoch=initial_epoch,
                             class_weight=data.class_weight, callbacks=callbacks)
        fit_seconds = time.perf_counter() - fit_t0
        losses = history.get("loss", [])
        if any(not math.isfinite(v) for v in losses):
            raise FloatingPointError(f"loss became NaN or infinite at epoch {initial_epoch + len(losses)}")
        epochs_run = initial_epoch + len(losses)
        stopped_early = early is not None and early.stopped_epoch > 0
        if log.out_of_time and epochs_run < epochs and not stopped_early:
            raise BudgetExhausted("time budget reached")
        if log.stopped_by and epochs_run < epochs and not stopped_early:
            raise SearchStopped(f"stopped by {log.stopped_by}")
        if log.best_weights is not None:
            model.set_weights(log.best_weights)
        tdir = self.run.trial_dir(tid)
        tmp = tdir / "best.tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, tdir / "best.weights.h5")
        y_val = data.labels[data.val_rows]
        prob = predict_rows(model, data.frames, data.val_rows)
        np.save(tdir / "val_probs.tmp.npy", prob)
        os.replace(tdir / "val_probs.tmp.npy", tdir / "val_probs.npy")
        floor, sure = exp["objective"]["recall_floor"], exp["objective"]["recall_confidence"]
        op = precision_at_recall(y_val, prob, floor, sure)
        params = int(model.count_params())
        if latency is None:
            latency = measure_latency_ms(model, data.frames.shape[1])
        tie_name = exp["objective"]["tie_break"]
        tie = tie_break_value(tie_name, y_val, prob, params=params, latency_ms=latency)
        _write_hparams(board, tid, SearchSpace.resolve_for_log(values), op.precision, tie, params, latency)
        return {
            "objective": op.precision, "objective_ci95": objective_interval(y_val, prob, floor, seed=int(tid), confidence=sure),
            "recall": op.recall, "threshold": op.threshold, "reason": op.reason, "threshold_note": op.note,
            "tie_break": tie, "tie_break_name": tie_name, "pr_auc": tie_break_value("pr_auc", y_val, prob),
            "val_loss": _at_epoch(history.get("val_loss", []), log.best_epoch - initial_epoch - 1),
            "params": params, "latency_ms": round(latency, 4), "epochs_run": epochs_run,
            "best_epoch": log.best_epoch, "fit_seconds": round(fit_seconds, 3), "split": "val", "feasible": True,
        }

    def save_model(self, trial_id, model, step=0):
        model.save_weights(self.run.trial_dir(trial_id) / "best.weights.h5")

    def load_model(self, trial):
        hm: SpaceHyperModel = self.hypermodel
        model = hm.build(trial.hyperparameters)
        model.load_weights(self.run.trial_dir(trial.trial_id) / "best.weights.h5")
        return model


def _strategy_scope(kind: str):
    """search.distribution = "mirrored": one trial on every local GPU (one CPU device here)."""
    if kind == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def _finished_in_log(run: RunDir) -> dict[str, dict[str, Any]]:
    return {t: r for t, r in trial_records(read_events(run.trials_log)).items() if r["status"] == "finished"}


def _score(outcome: dict[str, Any]) -> float:
    """What the oracle maximizes: the objective with its tie-break; infeasible trials below every feasible one."""
    value = oracle_score(outcome["objective"], outcome["tie_break"])
    return value if outcome.get("feasible", True) else value - 2.0


def _write_hparams(folder: Path, trial_id: str, values: dict[str, Any], objective: float, tie: float,
                   params: int, latency: float) -> None:
    """One HParams record per trial, so TensorBoard's HParams tab compares trials of a run."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    with tf.summary.create_file_writer(str(folder / "hparams")).as_default():
        hp_api.hparams(values, trial_id=trial_id)
        for name, value in (("objective_val", objective), ("tie_break_val", tie), ("params", params), ("latency_ms", latency)):
            tf.summary.scalar(name, value, step=0)


def _at_epoch(values: list[float], index: int) -> float | None:
    return float(values[index]) if 0 <= index < len(values) else None


def make_hypermodel(exp: config_mod.Experiment, space: SearchSpace, n_train: int = 0):
    """The space as a KerasTuner HyperModel: our CNN families, or an AutoKeras graph for tuner autokeras."""
    size, floor, tuner = exp["data"]["image_size"], exp["objective"]["recall_floor"], exp["search"]["tuner"]
    if tuner == "autokeras":
        if "autokeras" not in space.sections:
            raise NasError(f"{space.source}: search.tuner = autokeras needs an autokeras: section in the space")
        return AutoKerasHyperModel(space, size, floor, n_train, exp["search"]["batch_size"], exp["budget"]["epochs"])
    if "blocks" not in space.sections:
        raise NasError(f"{space.source}: search.tuner = {tuner} needs a blocks: section in the space "
                       "(a space with only autokeras: is for tuner autokeras)")
    steps = -(-n_train // exp["search"]["batch_size"]) * exp["budget"]["epochs"]
    return SpaceHyperModel(space, size, floor, decay_steps=steps)


def make_oracle(exp: config_mod.Experiment, space: SearchSpace):
    """The proposal algorithm named by search.tuner."""
    s, b = exp["search"], exp["budget"]
    common = dict(objective=OBJECTIVE, seed=s["seed"] + 1,  # KerasTuner reads seed 0 as "no seed"
                  max_consecutive_failed_trials=s["max_consecutive_failures"])
    tuner = s["tuner"]
    if space.warm_start and tuner not in ("random", "bayesian"):
        raise NasError(f"{space.source}: warm_start works with search.tuner random or bayesian, not {tuner}")
    if tuner == "random":
        return warm_started(keras_tuner.oracles.RandomSearchOracle(max_trials=b["max_trials"], **common), space)
    if tuner == "bayesian":
        return warm_started(keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=b["max_trials"], num_initial_points=min(s["bayesian_initial_points"], b["max_trials"]), **common),
            space)
    if tuner == "hyperband":
        # brackets repeat until max_trials caps them, so the budget means the same for every tuner
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max(2, b["epochs"]), factor=s["hyperband_factor"],
                                                     hyperband_iterations=b["max_trials"], **common)
        oracle.max_trials = b["max_trials"]
        return oracle
    if tuner == "autokeras":  # AutoKeras's own default search algorithm, over the AutoKeras graph
        from autokeras.tuners.greedy import GreedyOracle

        common.pop("max_consecutive_failed_trials")
        oracle = GreedyOracle(max_trials=b["max_trials"], **common)
        oracle.max_consecutive_failed_trials = s["max_consecutive_failures"]
        return oracle
    raise NasError(f"search.tuner = {tuner!r}: unknown tuner")


def warm_started(oracle, space: SearchSpace):
    """Propose the space's warm_start configurations first, each once (a resumed search skips those already
    tried), then hand over to the oracle's own algorithm, which counts them as its first observations."""
    if not space.warm_start:
        return oracle
    propose = oracle.populate_space

    def populate_space(trial_id):
        tried = [t.hyperparameters.values for t in oracle.trials.values()]
        for start in space.warm_start:
            if not any(all(v.get(k) == x for k, x in start.items()) for v in tried):
                return {"status": "RUNNING", "values": dict(start)}  # KerasTuner's TrialStatus.RUNNING
        return propose(trial_id)

    oracle.populate_space = populate_space
    return oracle


def prepare_data(exp: config_mod.Experiment, run: RunDir, cache_root: Path, *, resume: bool,
                 progress: Callable[[int, int], None] | None = None) -> tuple[TrialData, cache_mod.CachedData, dict]:
    """Scan and validate the data (or re-read the frozen split on resume, refusing changed files), build
    the cache, and split. Returns the trial data, the cache, and the class balance per split."""
    d = exp["data"]
    root = Path(d["path"])
    if resume:
        splits_mod.require_unchanged(run.split, root)
        records, splits = splits_mod.read_split(run.split, d["positive"])
    else:
        records = data_mod.scan(root, d["positive"], d["negative"])
        splits = None
    cached = cache_mod.build_cache(records, root, cache_root, d["image_size"], tuple(d["clip_percentiles"]),
                                  skip_bad=d["skip_bad"], progress=progress, **cache_mod.frame_options(d))
    if splits is None:
        splits = splits_mod.make_split(cached.records, tuple(d["split"]), d["seed"])
        dropped = _duplicates_across_splits(cached, splits, root, d["skip_bad"])
        keep = [i for i in range(len(cached.records)) if i not in dropped]
        splits_mod.write_split(run.split, root, [cached.records[i] for i in keep], [splits[i] for i in keep],
                             d["positive"], d["negative"])
        cached.skipped.extend((cached.records[i].path, reason) for i, reason in sorted(dropped.items()))
        splits = [s if i not in dropped else "dropped" for i, s in enumerate(splits)]
    else:
        kept = {r.path for r in cached.records}
        splits = [s for r, s in zip(records, splits, strict=True) if r.path in kept]
    split_arr = np.array(splits)
    labels = cached.labels
    train_rows, val_rows = np.flatnonzero(split_arr == "train"), np.flatnonzero(split_arr == "val")
    weights = data_mod.class_weights(labels[train_rows]) if exp["training"]["class_weight"] == "auto" else None
    data = TrialData(cached.frames, labels, train_rows, val_rows, weights, dict(exp["augment"]))
    return data, cached, splits_mod.balance(labels, split_arr)


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


def _event_writer(run: RunDir, sink: EventSink | None) -> Callable[..., None]:
    def emit(event: str, **fields):
        record = append_event(run.trials_log, event, **fields)
        if sink:
            sink(record)

    return emit


def start_search(exp: config_mod.Experiment, results: Path, run_id: str | None = None, *,
                 sink: EventSink | None = None, progress: Callable[[int, int], None] | None = None,
                 chief: tuple[str, int] | None = None, workers: int = 0) -> RunDir:
    """Create a run folder, freeze the config and space into it, and search until the budget ends."""
    space = load_space(exp["search"]["space"])
    make_hypermodel(exp, space)  # refuse a space that does not fit the tuner before any work
    run = create_run(exp, space, results, run_id)
    with run_lock(run):
        return _search(exp, space, run, results, resume=False, sink=sink, progress=progress, chief=chief, workers=workers)


def resume_search(run_path: Path, *, max_trials: int | None = None, time_budget: float | None = None,
                  sink: EventSink | None = None, progress: Callable[[int, int], None] | None = None,
                  worker_trials: int | None = None, deadline: float | None = None,
                  chief: tuple[str, int] | None = None, workers: int = 0) -> RunDir:
    """Continue a run from its frozen config and space; only the budget may be extended."""
    run = RunDir(Path(run_path)).check_exists()
    with run_lock(run):
        exp = config_mod.load_experiment(run.experiment, resolve_paths=False)
        space = parse_space(run.space.read_text(), str(run.space))
        refuse_changes(run, exp, space)
        if max_trials is not None:
            exp = exp.with_values("budget", "max_trials", max_trials)
        if time_budget is not None:
            exp = exp.with_values("budget", "time_budget", time_budget)
        atomic_write_text(run.experiment, exp.to_toml())
        repair_log(run.trials_log)
        results = run.path.parent.parent
        return _search(exp, space, run, results, resume=True, sink=sink, progress=progress,
                       worker_trials=worker_trials, deadline=deadline, chief=chief, workers=workers)


def _serve_as_chief(oracle, hypermodel, run: RunDir, exp, data: TrialData, emit, deadline, address, workers: int,
                    resume: bool) -> RunDir:
    """Hold the oracle for workers (ours on this machine, and any that join with `nas worker`)."""
    from nas import distributed

    host, port = address
    with distributed.tuner_environment("chief", host, port), contextlib.redirect_stdout(io.StringIO()):
        tuner = NasTuner(oracle, hypermodel, run, exp, data, emit, deadline)
    if resume:
        for trial_id in distributed.requeue_stale(tuner.oracle):
            emit("trial_interrupted", trial_id=trial_id, reason="its worker is gone; re-queued")
    tuner.save()
    distributed.write_chief_file(run, host, port, deadline)
    local = distributed.LocalWorkers(run, f"{host}:{port}") if workers else None
    for _ in range(workers):
        local.start()

    def lost(tuner_id: str, code: int, trial_id: str | None) -> None:
        emit("worker_lost", tuner_id=tuner_id, exit_code=code, trial_id=trial_id,
             reason="worker died" + (f"; trial {trial_id} re-queued, it continues from its last checkpoint" if trial_id else ""))

    distributed.serve(tuner.oracle, host, port, local, on_requeue=lost)
    (run.path / distributed.CHIEF_FILE).unlink(missing_ok=True)
    emit("search_ended", reason="budget of trials reached")
    return run


def worker_search(run_path: Path, chief: tuple[str, int] | None = None, tuner_id: str | None = None,
                  sink: EventSink | None = None) -> RunDir:
    """Join a chief's search: ask it for trials, train them, write events into the shared run folder.
    A worker restarted with the same tuner id continues the trial it was running."""
    from nas import distributed

    run = RunDir(Path(run_path)).check_exists()
    info = distributed.read_chief_file(run) if chief is None else {"host": chief[0], "port": chief[1], "deadline": None}
    if chief is None:
        chief = (info["host"], info["port"])
    exp = config_mod.load_experiment(run.experiment, resolve_paths=False)
    space = parse_space(run.space.read_text(), str(run.space))
    emit = _event_writer(run, sink)
    data, _, _ = prepare_data(exp, run, run.path.parent.parent / CACHE_FOLDER, resume=True)
    oracle = make_oracle(exp, space)
    oracle.verbose = 0
    hypermodel = make_hypermodel(exp, space, n_train=len(data.train_rows))
    with distributed.tuner_environment(tuner_id or distributed.worker_id(), *chief):
        with contextlib.redirect_stdout(io.StringIO()):
            tuner = NasTuner(oracle, hypermodel, run, exp, data, emit, info.get("deadline"))
        try:
            with stopping.graceful_stop():
                tuner.search()
        except (BudgetExhausted, SearchStopped):
            pass
    return run


BUDGET_KEYS = ("budget.max_trials", "budget.time_budget")


def refuse_changes(run: RunDir, frozen: config_mod.Experiment, space: SearchSpace) -> None:
    """Resuming after the experiment or the space was edited would mix trials of two searches (keras-tuner
    #290, #461): compare the files the run came from with its frozen copies and refuse, showing the change.
    Only the budget may grow."""
    meta_path = run.path / "run.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    problems = []
    source = Path(meta["experiment_file"])
    if source.is_file():
        try:
            now = config_mod.load_experiment(source, meta.get("overrides", []), base=meta.get("cwd"))
            lines = config_mod.diff(frozen.values, now.values, ignore=BUDGET_KEYS)
        except NasError as exc:
            lines = [f"it no longer loads: {exc}"]
        if lines:
            problems.append(f"{source} changed since the run started:\n    " + "\n    ".join(lines))
    space_file = Path(meta["space_file"])
    if space_file.is_file():
        try:
            changed = load_space(space_file).fingerprint != space.fingerprint
        except NasError:
            changed = True
        if changed:
            import difflib

            delta = difflib.unified_diff(space.text.splitlines(), space_file.read_text().splitlines(),
                                         "search_space.yaml (frozen)", str(space_file), lineterm="", n=0)
            problems.append(f"{space_file} changed since the run started:\n    " + "\n    ".join(delta))
    if problems:
        raise NasError(f"{run.path}: refusing to resume: " + "\n".join(problems)
                       + "\nRestore the files, or start a new run with 'nas search'. Only --max-trials and --time-budget may change.")


def _search(exp, space, run: RunDir, results: Path, *, resume: bool, sink, progress,
            worker_trials: int | None = None, deadline: float | None = None,
            chief: tuple[str, int] | None = None, workers: int = 0) -> RunDir:
    emit = _event_writer(run, sink)
    resume = resume and run.split.is_file()  # a supervisor's first worker starts the run
    data, cached, balance = prepare_data(exp, run, results / CACHE_FOLDER, resume=resume, progress=progress)
    for path, reason in cached.skipped:
        emit("data_skipped", path=path, reason=reason)
    budget = exp["budget"]["time_budget"]
    if deadline is None:
        deadline = time.time() + budget if budget else None
    logged = [t for t in trial_records(read_events(run.trials_log)).values() if t["status"] == "finished"]
    best = max((t["objective"] for t in logged if t.get("feasible", True)), default=None)
    emit("search_started", resumed=resume, tuner=exp["search"]["tuner"], space=space.name, done=len(logged), best=best,
         max_trials=exp["budget"]["max_trials"], time_budget=budget,
         train=int(len(data.train_rows)), val=int(len(data.val_rows)), skipped=len(cached.skipped),
         balance=balance, cache=str(cached.directory), decoded=cached.rebuilt)
    oracle = make_oracle(exp, space)
    oracle.verbose = 0
    hypermodel = make_hypermodel(exp, space, n_train=len(data.train_rows))
    if chief:
        return _serve_as_chief(oracle, hypermodel, run, exp, data, emit, deadline, chief, workers, resume)
    with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
        tuner = NasTuner(oracle, hypermodel, run, exp, data, emit, deadline, stop_after=worker_trials)
    if hasattr(oracle, "max_trials"):
        oracle.max_trials = exp["budget"]["max_trials"]
    reason = "budget of trials reached"
    try:
        with stopping.graceful_stop():
            tuner.search()
    except BudgetExhausted:
        reason = "time budget reached"
    except RecycleWorker as exc:
        emit("worker_recycled", reason=str(exc))
        raise Recycled(str(exc)) from None
    except SearchStopped as exc:
        emit("search_ended", reason=str(exc))
        raise Stopped(f"{exc}: the last finished epoch is checkpointed; continue with 'nas resume {run.path}'") from None
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        emit("search_ended", reason="too many consecutive failed trials")
        raise NasError(
            f"search stopped: {exp['search']['max_consecutive_failures']} consecutive trials failed "
            f"(see {run.trials_log}); finished trials are kept. Last error: {str(exc).splitlines()[-1][:300]}"
        ) from None
    emit("search_ended", reason=reason)
    return run
