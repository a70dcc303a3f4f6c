"""Worker processes for long searches: a process keeps the memory high-water mark of the largest models it
trained (and ~0.5 MB a model, once nas.models.fresh_session released what TensorFlow's gradient registry
held), so with `search.recycle_every = K` the search runs in child processes that each run K trials and
exit; the next child resumes the run. The supervisor imports no TensorFlow and holds the run's lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nas.config import Experiment
from nas.runlog import LOCK_PARENT_ENV, SEARCH_T0_ENV, RunDir, create_run, run_lock
from nas.space import load_space

RECYCLED_EXIT = 75  # a worker's "I ran my share, start the next one" (EX_TEMPFAIL)


def supervised_search(exp: Experiment, results: Path, run_id: str | None) -> tuple[RunDir, int]:
    """Create the run, then run workers until one ends the search; returns the run and the last exit code."""
    space = load_space(exp.search.space)
    run = create_run(exp, space, results, run_id)
    with run_lock(run):
        budget = exp.budget.time_budget
        started = time.time()
        deadline = started + budget if budget else 0.0
        while True:
            code = _worker(run, exp.search.recycle_every, deadline, started)
            if code != RECYCLED_EXIT:
                return run, code


def _worker(run: RunDir, trials: int, deadline: float, started: float) -> int:
    cmd = [sys.executable, "-m", "nas", "resume", str(run.path), "--worker-trials", str(trials)]
    if deadline:
        cmd += ["--deadline", repr(deadline)]
    proc = subprocess.Popen(cmd, env={**os.environ, LOCK_PARENT_ENV: str(os.getpid()), SEARCH_T0_ENV: repr(started)})
    # Ctrl-C reaches the worker from the terminal; SIGTERM sent to us is passed on. Either way the worker
    # finishes its epoch, checkpoints and exits, and we wait for it.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
