"""A chief: hold the oracle for workers (ours on this machine, and any that join with `nas worker`)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

from nas import distributed
from nas.runlog import RunDir
from nas.search.oracles import stop_reason
from nas.search.tuner import NasTuner
from nas.trial import Event


def serve_as_chief(make_tuner: Callable[[], NasTuner], address: tuple[str, int], workers: int, resume: bool) -> RunDir:
    """Serve the tuner's oracle at address until the search is over; start `workers` local workers. The
    tuner is made here: KerasTuner reads its distributed role from the environment when it is built."""
    host, port = address
    with distributed.tuner_environment("chief", host, port), contextlib.redirect_stdout(io.StringIO()):
        tuner = make_tuner()
    run, log = tuner.run, tuner.log
    if resume:
        for trial_id in distributed.requeue_stale(tuner.oracle):
            log.emit(Event.TRIAL_INTERRUPTED, trial_id=trial_id, reason="its worker is gone; re-queued")
    tuner.save()
    distributed.write_chief_file(run, host, port, tuner.deadline)
    local = distributed.LocalWorkers(run, f"{host}:{port}") if workers else None
    for _ in range(workers):
        local.start()

    def lost(tuner_id: str, code: int, trial_id: str | None) -> None:
        log.emit(Event.WORKER_LOST, tuner_id=tuner_id, exit_code=code, trial_id=trial_id,
                 reason="worker died" + (f"; trial {trial_id} re-queued, it continues from its last checkpoint" if trial_id else ""))

    distributed.serve(tuner.oracle, host, port, local, on_requeue=lost)
    (run.path / distributed.CHIEF_FILE).unlink(missing_ok=True)
    log.emit(Event.SEARCH_ENDED, reason=stop_reason(tuner.oracle) or "budget of trials reached")
    return run
