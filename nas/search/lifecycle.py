"""A search's life: start a run, resume it, serve it as a chief, join it as a worker; and the loop that
turns how the tuner stopped into how the search ends."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas import ktadapter, precision, stopping
from nas.config import Experiment
from nas.errors import NasError, Recycled, Stopped
from nas.prepare import Progress, RunFrames, split_new_run
from nas.reopen import OpenRun, reopen
from nas.runlog import EventLog, RunDir, atomic_write_text, create_run, repair_log, run_lock
from nas.search.changes import refuse_changes
from nas.search.interrupt import Interrupt, Reason
from nas.search.oracles import CostContext, make_hypermodel, make_oracle, stop_reason
from nas.search.tuner import NasTuner
from nas.space import load_space
from nas.trial import Event

EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Session:
    """How this process takes part: where events go, progress of the cache build, the deadline, and its role."""

    sink: EventSink | None = None
    progress: Progress | None = None
    deadline: float | None = None
    worker_trials: int | None = None  # a recycled worker: run this many trials, then hand over
    chief: tuple[str, int] | None = None  # serve the oracle at this address
    workers: int = 0  # local workers a chief starts


def start_search(exp: Experiment, results: Path, run_id: str | None = None, session: Session = Session()) -> RunDir:
    """Create a run folder, freeze the config and space into it, and search until the budget ends."""
    ktadapter.check()
    require_init_weights(exp)
    space = load_space(exp.search.space)
    make_hypermodel(exp, space)  # refuse a space that does not fit the tuner before any work,
    make_oracle(exp.search, exp.budget, space)  # and settings the oracle cannot take
    run = create_run(exp, space, results, run_id)
    with run_lock(run):
        return _search(OpenRun(run, exp, space), resume=False, session=session)


def resume_search(run_path: Path, *, max_trials: int | None = None, time_budget: float | None = None,
                  session: Session = Session()) -> RunDir:
    """Continue a run from its frozen config and space; only the budget may be extended."""
    opened = reopen(run_path)
    require_init_weights(opened.exp)
    with run_lock(opened.run):
        refuse_changes(opened.run, opened.exp, opened.space)
        exp = opened.exp
        if max_trials is not None:
            exp = exp.with_values("budget", "max_trials", max_trials)
        if time_budget is not None:
            exp = exp.with_values("budget", "time_budget", time_budget)
        atomic_write_text(opened.run.experiment, exp.to_toml())
        repair_log(opened.run.trials_log)
        return _search(OpenRun(opened.run, exp, opened.space), resume=True, session=session)


def worker_search(run_path: Path, chief: tuple[str, int] | None = None, tuner_id: str | None = None,
                  sink: EventSink | None = None) -> RunDir:
    """Join a chief's search: ask it for trials, train them, write events into the shared run folder.
    A worker restarted with the same tuner id continues the trial it was running."""
    from nas import distributed

    opened = reopen(run_path)
    require_init_weights(opened.exp)
    info = distributed.read_chief_file(opened.run) if chief is None else {"host": chief[0], "port": chief[1], "deadline": None}
    frames = opened.frames(all_sizes=True)
    with distributed.tuner_environment(tuner_id or distributed.worker_id(), info["host"], info["port"]):
        tuner = _tuner(opened, frames, EventLog(opened.run, sink), info.get("deadline"))
        with contextlib.suppress(Interrupt), stopping.graceful_stop():
            tuner.search()
    return opened.run


def _prepare(opened: OpenRun, resume: bool, session: Session) -> RunFrames:
    """The run's frames: a new run scans, caches and splits; a resumed one reopens its split."""
    sizes = opened.space.sizes(opened.exp.data.image_size)
    if resume:
        return opened.frames(all_sizes=True, progress=session.progress)
    return split_new_run(opened.run, opened.exp.data, opened.exp.objective.folds, opened.run.cache_root, sizes=sizes,
                         progress=session.progress)


def _quiet() -> None:
    """Retracing notices and the Bayesian oracle's GP fitting chatter are not for the user."""
    import logging
    import warnings

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="sklearn.gaussian_process")


def require_init_weights(exp: Experiment) -> None:
    """Trials start from training.init_weights: the file must be there before any work (a frozen experiment
    may name one that has moved since; export and report do not need it)."""
    path = exp.training.init_weights
    if path and not Path(path).is_file():
        raise NasError(f"{exp.source}: training.init_weights: {path}: file not found (expected a Keras .weights.h5 file)")


def _tuner(opened: OpenRun, frames: RunFrames, log: EventLog, deadline: float | None, stop_after: int | None = None) -> NasTuner:
    """The tuner over the run's oracle and hypermodel (KerasTuner prints "Reloading Tuner from ...": hushed),
    in the run's arithmetic precision."""
    ktadapter.apply()
    _quiet()
    precision.apply(precision.choose(opened.exp.search.precision, opened.run.path, opened.exp.data.image_size)["policy"])
    exp, space = opened.exp, opened.space
    cost = CostContext(trials=log.trials, emit=log.emit, deadline=deadline, epochs=exp.budget.epochs,
                       folds=len(frames.plans()) if frames.cv else 1, image_size=exp.data.image_size)
    oracle = make_oracle(exp.search, exp.budget, space, cost)
    hypermodel = make_hypermodel(exp, space, n_train=len(frames.plans()[0].train_rows))
    with contextlib.redirect_stdout(io.StringIO()):
        tuner = NasTuner(oracle, hypermodel, opened.run, exp, frames, log, deadline, stop_after=stop_after)
    if hasattr(oracle, "max_trials"):
        oracle.max_trials = exp.budget.max_trials
    return tuner


def _announce(opened: OpenRun, frames: RunFrames, log: EventLog, resume: bool) -> None:
    exp, budget = opened.exp, opened.exp.budget
    arithmetic = precision.choose(exp.search.precision, opened.run.path, exp.data.image_size)
    logged = [t for t in log.trials().values() if t.usable]
    plans = frames.plans()
    log.emit(Event.SEARCH_STARTED, resumed=resume, tuner=exp.search.tuner, space=opened.space.name, done=len(logged),
             best=max((t.objective for t in logged), default=None), max_trials=budget.max_trials,
             time_budget=budget.time_budget, train=int(len(plans[0].train_rows)), val=int(len(frames.validation_rows())),
             folds=len(plans) if frames.cv else 0, skipped=len(frames.cached.skipped), balance=frames.balance(),
             cache=str(frames.cached.directory), decoded=frames.cached.rebuilt, precision=arithmetic,
             machine=precision.machine())


def _search(opened: OpenRun, *, resume: bool, session: Session) -> RunDir:
    run, exp = opened.run, opened.exp
    log = EventLog(run, session.sink)
    resume = resume and run.split.is_file()  # a supervisor's first worker starts the run
    frames = _prepare(opened, resume, session)
    for path, reason in frames.cached.skipped:
        log.emit(Event.DATA_SKIPPED, path=path, reason=reason)
    deadline = session.deadline
    if deadline is None and exp.budget.time_budget:
        deadline = time.time() + exp.budget.time_budget
    _announce(opened, frames, log, resume)
    if session.chief:
        from nas.search.chief import serve_as_chief

        return serve_as_chief(lambda: _tuner(opened, frames, log, deadline), session.chief, session.workers, resume)
    tuner = _tuner(opened, frames, log, deadline, stop_after=session.worker_trials)
    if resume and (orphans := ktadapter.orphaned_trials(tuner.oracle)):
        ktadapter.retry_queue(tuner.oracle).extend(orphans)  # run them; they count against max_trials already
        tuner.oracle.save()
    return _loop(tuner, log, run, exp)


def _loop(tuner: NasTuner, log: EventLog, run: RunDir, exp: Experiment) -> RunDir:
    """Run the tuner until its budget ends, and say how the search ended."""
    reason = "budget of trials reached"
    try:
        with stopping.graceful_stop():
            tuner.search()
    except Interrupt as exc:
        if exc.reason is Reason.RECYCLE:
            log.emit(Event.WORKER_RECYCLED, reason=exc.detail)
            raise Recycled(exc.detail) from None
        if exc.reason is Reason.STOP:
            log.emit(Event.SEARCH_ENDED, reason=exc.detail)
            raise Stopped(f"{exc.detail}: the last finished epoch is checkpointed; continue with 'nas resume {run.path}'") from None
        reason = exc.detail
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        log.emit(Event.SEARCH_ENDED, reason="too many consecutive failed trials")
        raise NasError(
            f"search stopped: {exp.search.max_consecutive_failures} consecutive trials failed "
            f"(see {run.trials_log}); finished trials are kept. Last error: {str(exc).splitlines()[-1][:300]}"
        ) from None
    finally:
        precision.apply(precision.FLOAT32)  # the process goes on (tests, notebooks): leave the default behind
    log.emit(Event.SEARCH_ENDED, reason=stop_reason(tuner.oracle) or reason)
    return run

