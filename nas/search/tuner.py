"""The KerasTuner tuner: its run_trial trains a trial's folds and reports the exact objective.

A trial reads as named steps: plan (the oracle's values resolved), skip if the log already has it,
announce, then for each fold restore or build -> check limits (first fold) -> train -> predict, with a
race against the incumbent between folds, then score and record. The log (`nas.runlog`) is the record
of truth; the oracle only hears one number back.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.base_tuner import BaseTuner

from nas import stopping
from nas.augment import trial_augment
from nas.automodel import AutoKerasHyperModel, adapt_preprocessing
from nas.checkpoint import clear_checkpoint, load_checkpoint
from nas.config import Experiment
from nas.latency import current_rss_mb, latency_once_ms
from nas.models import build_model, fresh_session
from nas.prepare import FoldPlan, RunFrames
from nas.runlog import EventLog, RunDir
from nas.search import fold as fold_mod
from nas.search.interrupt import Interrupt, Reason
from nas.search.limits import over_limits
from nas.search.racing import race
from nas.search.scoring import score
from nas.stopwatch import Stopwatch
from nas.training import trial_seed
from nas.trial import Event, FoldResult, TrialRecord, TrialStatus, oracle_score


@dataclass(frozen=True)
class TrialPlan:
    """One trial as the oracle proposed it, resolved against the space and the experiment."""

    trial_id: str
    hp: Any
    values: dict[str, Any]  # every key of the space, constants included
    searched: dict[str, Any]  # what the oracle chose (the trial record's hyperparameters)
    fidelity: dict[str, Any]  # Hyperband's tuner/* values
    epochs: int
    initial_epoch: int
    image_size: int
    augment: dict[str, Any]


class NasTuner(BaseTuner):
    """A KerasTuner tuner whose trials report the exact validation precision at the recall floor."""

    def __init__(self, oracle, hypermodel, run: RunDir, exp: Experiment, frames: RunFrames, log: EventLog,
                 deadline: float | None, stop_after: int | None = None):
        self.run, self.exp, self.frames, self.log, self.deadline = run, exp, frames, log, deadline
        self.stop_after, self.trials_run, self.ended_at = stop_after, 0, time.perf_counter()
        self.rss_after_first: float | None = None
        self.ctx = fold_mod.FoldContext(frames, exp.training, log.emit, deadline, self.stops_at_deadline)
        self.overran: set[str] = set()  # trials told that they go on past the deadline
        self.epochs_planned = 0  # of the running trial, all its folds (its pace says how long it goes on)
        self.policy = keras.mixed_precision.global_policy().name  # set by the run's precision decision
        super().__init__(oracle, hypermodel, directory=str(run.tuner), project_name="search", overwrite=False)

    def pre_create_trial(self):
        if self.deadline is not None and time.time() >= self.deadline:
            raise Interrupt(Reason.BUDGET)
        if stopping.requested():
            raise Interrupt(Reason.STOP, f"stopped by {stopping.requested()}")
        if self.stop_after and self.oracle.remaining_trials() != 0:
            if self.trials_run >= self.stop_after:
                raise Interrupt(Reason.RECYCLE, f"{self.trials_run} trials run in this worker process")
            grown, limit = current_rss_mb() - (self.rss_after_first or 0.0), self.exp.search.recycle_memory_mb
            if self.rss_after_first is not None and limit and grown > limit:
                raise Interrupt(Reason.RECYCLE, f"resident memory grew {grown:.0f} MB over {self.trials_run} trials in "
                                                "this worker process")

    def stops_at_deadline(self, trial_id: str) -> bool:
        """Whether a trial stops at the deadline: yes, unless no trial of the run has finished yet. A budget
        shorter than one trial would otherwise end the search with nothing to export: on a 2-core AMD EPYC
        without AVX-512 the recommended experiment's first warm start took 32 of its 15 minutes (470-560 s on
        the Sapphire Rapids it was sized on). That trial goes on to finish, said once in the log and on the
        terminal; Ctrl-C still stops it, and the search ends after it. (Optuna's timeout lets every running
        trial finish; here only a first one.)"""
        trials = self.log.trials()  # asked each epoch only past the deadline, and while no trial has finished
        if any(rec.usable for rec in trials.values()):
            return True
        if trial_id not in self.overran:
            self.overran.add(trial_id)
            self.log.emit(Event.BUDGET_PASSED, trial_id=trial_id, tuner_id=self.tuner_id,
                          budget_s=self.exp.budget.time_budget or None,
                          seconds_left=seconds_left(trials.get(trial_id), self.epochs_planned))
        return False

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run += 1
        self.ended_at = time.perf_counter()
        if self.rss_after_first is None:
            self.rss_after_first = current_rss_mb()  # TensorFlow's own start-up is done by now

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        clock = Stopwatch()
        clock.add("oracle_wait", time.perf_counter() - self.ended_at)  # proposing, and KerasTuner's own state
        t0 = time.perf_counter()
        with clock.phase("reset"):
            plan = self.plan(trial)
        logged = self.log.trials().get(plan.trial_id)  # other workers write this log too
        if logged is not None and logged.status is TrialStatus.FINISHED:
            return {"score": oracle_score(logged)}  # a kill between our log line and KerasTuner's state file
        self.announce(plan, logged)
        self.epochs_planned = (plan.epochs - plan.initial_epoch) * len(self.frames.plans())
        try:
            record = self.train_and_score(plan, logged, clock)
        except Interrupt as exc:
            self.log.emit(Event.TRIAL_INTERRUPTED, trial_id=plan.trial_id,
                          reason=f"{exc.detail} during the trial; its last epoch is checkpointed")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()[:2000]
            self.log.emit(Event.TRIAL_FAILED, trial_id=plan.trial_id, reason=reason, seconds=round(time.perf_counter() - t0, 3))
            raise keras_tuner.errors.FailedTrialError(reason) from exc
        finally:
            with clock.phase("reset"):
                fresh_session()  # however the trial ended, its model is gone: release it (rss_mb is what stays)
        self.record(record, time.perf_counter() - t0, clock)
        return {"score": oracle_score(record)}

    def plan(self, trial) -> TrialPlan:
        """Seed the trial, resolve its values, and read what the oracle asks of it."""
        hp, tid = trial.hyperparameters, trial.trial_id
        # Keras's global state only; the previous trial's graphs were released when it ended (run_trial).
        # Keras 3 keeps the dtype policy in the state this clears: set it again.
        keras.backend.clear_session(free_memory=False)
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(trial_seed(self.exp.search.seed, tid))
        values = self.hypermodel.space.resolve(hp)
        searched = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}  # AutoKeras adds its own
        fidelity = {k[len("tuner/"):]: v for k, v in hp.values.items() if k.startswith("tuner/")}
        augment = trial_augment(self.exp.augment, values)
        return TrialPlan(tid, hp, values, searched, fidelity,
                         epochs=int(fidelity.get("epochs", values.get("training.epochs", self.exp.budget.epochs))),
                         initial_epoch=int(fidelity.get("initial_epoch", 0)),
                         image_size=int(values.get("input.image_size", self.exp.data.image_size)), augment=augment)

    def announce(self, plan: TrialPlan, logged: TrialRecord | None) -> None:
        done = {f.fold for f in logged.folds} if logged else set()
        pending = [p for p in self.frames.plans() if p.index not in done]
        ckpt = load_checkpoint(self.fold_folder(plan.trial_id, pending[0].index)) if pending else None
        extra = {"folds_done": len(done)} if self.frames.cv else {}
        self.log.emit(Event.TRIAL_STARTED, trial_id=plan.trial_id, hyperparameters=plan.searched, fidelity=plan.fidelity,
                      epochs=plan.epochs, resumed_from_epoch=ckpt["epoch"] if ckpt else 0, **extra, pid=os.getpid(),
                      tuner_id=self.tuner_id)

    def train_and_score(self, plan: TrialPlan, logged: TrialRecord | None, clock: Stopwatch) -> TrialRecord:
        """Every fold still to do (a race may end the trial early), then the objective of all of them."""
        done = {f.fold: f for f in logged.folds} if logged else {}
        outcomes: list[fold_mod.FoldOutcome] = []
        model, latency, raced = None, None, ""
        with strategy_scope(self.exp.search.distribution):
            for fplan in self.frames.plans():
                if fplan.index in done:
                    outcomes.append(self.reload_fold(plan, fplan, done[fplan.index]))
                    continue
                job = self.fold_job(plan, fplan)
                with clock.phase("build"):
                    first = model is None
                    started = fold_mod.restore_or_build(job, lambda steps, f=fplan: self.build(plan, f, steps))
                    model = started.model
                if first:
                    latency, infeasible = self.check_limits(plan, model, clock)
                    if infeasible:
                        return infeasible
                outcomes.append(fold_mod.finish_fold(started, job, self.ctx, clock))
                if self.frames.cv:
                    self.fold_finished(plan, outcomes[-1], job, clock)
                    if len(outcomes) < len(self.frames.plans()) and (raced := self.race(outcomes, clock)):
                        break
            with clock.phase("latency"):
                model = model or self.build(plan, self.frames.plans()[0], 0)
                latency = latency if latency is not None else latency_once_ms(model, plan.image_size)
        return self.scored(plan, outcomes, int(model.count_params()), latency, raced, clock)

    def fold_job(self, plan: TrialPlan, fplan: FoldPlan) -> fold_mod.FoldJob:
        warm = None
        if "trial_id" in plan.fidelity:  # Hyperband: continue from the earlier round's weights of this fold
            warm = self.fold_folder(str(plan.fidelity["trial_id"]), fplan.index) / fold_mod.WEIGHTS
        board = self.run.path / "tensorboard" / plan.trial_id
        return fold_mod.FoldJob(
            trial_id=plan.trial_id, plan=fplan, folder=self.fold_folder(plan.trial_id, fplan.index), epochs=plan.epochs,
            initial_epoch=plan.initial_epoch, seed=trial_seed(self.exp.search.seed, plan.trial_id, fplan.index),
            image_size=plan.image_size, batch_size=self.exp.search.batch_size, augment=plan.augment,
            select_best_epoch=not self.frames.cv, warm_from=warm,
            init_weights=Path(self.exp.training.init_weights) if self.exp.training.init_weights else None,
            checkpoint_every_s=self.exp.search.checkpoint_every_s,
            board=board / f"fold-{fplan.index}" if self.frames.cv else board)

    def fold_folder(self, trial_id: str, fold: int) -> Path:
        """trials/<id>/ for a trial of one fold; trials/<id>/fold-<k>/ under cross-validation."""
        base = self.run.trial_dir(trial_id)
        return base / f"fold-{fold}" if self.frames.cv else base

    def build(self, plan: TrialPlan, fplan: FoldPlan, decay_steps: int) -> keras.Model:
        """The trial's model, freshly initialised (seeded per fold): our CNN families, or the AutoKeras graph."""
        keras.utils.set_random_seed(trial_seed(self.exp.search.seed, plan.trial_id, fplan.index))
        if isinstance(self.hypermodel, AutoKerasHyperModel):
            model = self.hypermodel.build(plan.hp)
            adapt_preprocessing(model, self.frames.stores[plan.image_size][fplan.train_rows[:256]][..., None])
            return model
        return build_model(plan.values, plan.image_size, self.exp.objective.recall_floor, decay_steps)

    def check_limits(self, plan: TrialPlan, model: keras.Model, clock: Stopwatch) -> tuple[float | None, TrialRecord | None]:
        """The constraints, checked before any training: an architecture over a limit is infeasible whatever
        it would learn, so it is recorded (with why) without spending training time on it."""
        with clock.phase("latency"):
            latency, reason = over_limits(model, plan.image_size, self.exp.constraints)
        if not reason:
            return latency, None
        return latency, TrialRecord(trial_id=plan.trial_id, status=TrialStatus.FINISHED, feasible=False, objective=0.0,
                                    tie_break=0.0, reason=reason, params=int(model.count_params()), latency_ms=latency,
                                    epochs_run=0, hyperparameters=plan.searched, fidelity=plan.fidelity)

    def reload_fold(self, plan: TrialPlan, fplan: FoldPlan, done: FoldResult) -> fold_mod.FoldOutcome:
        """A fold this trial finished before a resume: its probabilities from its folder."""
        prob = np.load(self.fold_folder(plan.trial_id, fplan.index) / fold_mod.PROBS)
        return fold_mod.FoldOutcome(fplan.index, prob, done.epochs_run, done.epochs_run, None, done.seconds,
                                    from_init=done.from_init)

    def fold_finished(self, plan: TrialPlan, outcome: fold_mod.FoldOutcome, job: fold_mod.FoldJob, clock: Stopwatch) -> None:
        y = self.frames.labels[job.plan.val_rows]
        with clock.phase("objective"):
            s = score(y, outcome.prob, self.exp.objective, seed=int(plan.trial_id), params=0, latency_ms=0.0,
                      groups=self.frames.groups[job.plan.val_rows], interval=False)
        self.log.emit(Event.FOLD_FINISHED, trial_id=plan.trial_id, fold=outcome.index, objective=s.objective,
                      threshold=s.threshold, n=int(len(y)), positives=int(y.sum()), epochs_run=outcome.epochs_run,
                      seconds=round(outcome.fit_seconds, 3), from_init=outcome.from_init)

    def race(self, outcomes: list[fold_mod.FoldOutcome], clock: Stopwatch) -> str:
        """Why the trial stops before its remaining folds ('' to go on): it cannot beat the incumbent."""
        if not self.exp.objective.racing:
            return ""
        with clock.phase("objective"):
            return race(self.run, self.log.trials(), self.frames, [o.prob for o in outcomes], self.exp.objective)

    def scored(self, plan: TrialPlan, outcomes: list[fold_mod.FoldOutcome], params: int, latency: float, raced: str,
               clock: Stopwatch) -> TrialRecord:
        """The trial's record: the exact objective of its pooled validation probabilities, and the rest."""
        rows = np.concatenate([p.val_rows for p in self.frames.plans()[: len(outcomes)]])
        prob = np.concatenate([o.prob for o in outcomes])
        if self.frames.cv:
            fold_mod.save_array(self.run.trial_dir(plan.trial_id) / "oof_probs.npy", prob)
        with clock.phase("objective"):
            s = score(self.frames.labels[rows], prob, self.exp.objective, seed=int(plan.trial_id), params=params,
                      latency_ms=latency, groups=self.frames.groups[rows], new_split=self.frames.test_shape())
        with clock.phase("tensorboard"):
            write_hparams(self.run.path / "tensorboard" / plan.trial_id, plan, s.objective, s.tie_break, params, latency)
        first = outcomes[0]
        cv = {"folds_done": len(outcomes), "folds_total": len(self.frames.plans()), "raced_out": bool(raced)} if self.frames.cv else {}
        return TrialRecord(
            trial_id=plan.trial_id, status=TrialStatus.FINISHED, objective=s.objective, objective_ci95=s.objective_ci95,
            recall=s.recall, threshold=s.threshold, reason=s.reason or raced, threshold_note=s.note, tie_break=s.tie_break,
            tie_break_name=self.exp.objective.tie_break, pr_auc=s.pr_auc, val_loss=first.val_loss, params=params,
            latency_ms=round(latency, 4), epochs_run=first.epochs_run, best_epoch=first.best_epoch,
            fit_seconds=round(sum(o.fit_seconds for o in outcomes), 3), split="oof" if self.frames.cv else "val",
            hyperparameters=plan.searched, fidelity=plan.fidelity, from_init=all(o.from_init for o in outcomes), **cv)

    def record(self, record: TrialRecord, seconds: float, clock: Stopwatch) -> None:
        """Log the finished trial and drop its epoch checkpoints (its weights and probabilities stay)."""
        self.log.finished(record.replace(seconds=round(seconds, 3), timing=clock.rounded(), rss_mb=current_rss_mb(),
                                         pid=os.getpid(), tuner_id=str(self.tuner_id),
                                         precision_policy=self.policy))
        for fplan in self.frames.plans():
            clear_checkpoint(self.fold_folder(record.trial_id, fplan.index))

    def save_model(self, trial_id, model, step=0):
        model.save_weights(self.run.trial_dir(trial_id) / fold_mod.WEIGHTS)

    def load_model(self, trial):
        model = self.hypermodel.build(trial.hyperparameters)
        model.load_weights(self.run.trial_dir(trial.trial_id) / fold_mod.WEIGHTS)
        return model


def write_hparams(folder: Path, plan: TrialPlan, objective: float, tie: float, params: int, latency: float) -> None:
    """One HParams record per trial, so TensorBoard's HParams tab compares trials of a run."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in plan.values.items()}
    with tf.summary.create_file_writer(str(folder / "hparams")).as_default():
        hp_api.hparams(values, trial_id=plan.trial_id)
        for name, value in (("objective_val", objective), ("tie_break_val", tie), ("params", params), ("latency_ms", latency)):
            tf.summary.scalar(name, value, step=0)


@contextlib.contextmanager
def strategy_scope(kind: str):
    """search.distribution = "mirrored": one trial on every local GPU (one CPU device here)."""
    if kind == "mirrored":
        import tensorflow as tf

        with tf.distribute.MirroredStrategy().scope():
            yield
    else:
        yield


def seconds_left(rec: TrialRecord | None, epochs_planned: int) -> float | None:
    """How long a running trial goes on at its pace so far: its epochs since it (last) started, over the
    time since, times the epochs it has still to run. None before its first epoch."""
    if rec is None or rec.started is None or not epochs_planned:
        return None
    done = [e for e in rec.epochs if float(e.get("time", 0.0)) >= rec.started]
    if not done:
        return None
    pace = (max(float(e["time"]) for e in done) - rec.started) / len(done)
    return round(pace * max(epochs_planned - len(rec.epochs), 0), 1)
