"""Search across processes and machines on KerasTuner's chief/worker oracle (gRPC).

The chief holds the oracle and the run's lock; workers ask it for trials and write their events and
checkpoints into the shared run folder. KerasTuner's own chief loop waits for every worker it has ever
seen, polling every 20 s, so one dead worker stalls the search for ever (keras-tuner #915). Ours serves the
same gRPC oracle but watches its local workers: when one dies, its trial goes back to the queue (another
worker continues it from its last epoch checkpoint) and a replacement worker is started.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from keras_tuner import synchronized

from nas import ktadapter
from nas.errors import NasError
from nas.runlog import RunDir, atomic_write_json

CHIEF_FILE = "chief.json"
MAX_REPLACEMENTS = 8  # a worker that keeps dying is a bug to report, not to retry for ever


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise NasError(f"--bind {text!r}: expected HOST:PORT, for example 127.0.0.1:8470")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def tuner_environment(role: str, host: str, port: int):
    """KerasTuner reads its distributed role from these variables when a tuner is built."""
    names = {"KERASTUNER_TUNER_ID": role, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": str(port)}
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@synchronized
def requeue_trial_of(oracle, tuner_id: str) -> str | None:
    """Give a dead worker's trial back to the queue and forget the worker; returns the trial id."""
    oracle.tuner_ids.discard(tuner_id)
    trial = oracle.ongoing_trials.pop(tuner_id, None)
    if trial is None:
        return None
    ktadapter.retry_queue(oracle).append(trial.trial_id)
    oracle.save()
    return trial.trial_id


@synchronized
def requeue_stale(oracle) -> list[str]:
    """On a chief's restart, trials left running by workers of an earlier session go back to the queue."""
    ids = [trial.trial_id for trial in oracle.ongoing_trials.values()] + ktadapter.orphaned_trials(oracle)
    queue = ktadapter.retry_queue(oracle)
    queue.extend(i for i in ids if i not in queue)
    oracle.ongoing_trials.clear()
    oracle.tuner_ids.clear()
    oracle.save()
    return ids


@synchronized
def _finished(oracle) -> bool:
    return not oracle.ongoing_trials and not ktadapter.retry_queue(oracle)


@dataclass
class LocalWorkers:
    """Worker processes this chief started on this machine."""

    run: RunDir
    address: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started: int = 0

    def start(self) -> str:
        tuner_id = f"worker{self.started}"
        self.started += 1
        cmd = [sys.executable, "-m", "nas", "worker", str(self.run.path), "--chief", self.address, "--tuner-id", tuner_id]
        self.procs[tuner_id] = subprocess.Popen(cmd)
        return tuner_id


def serve(oracle, host: str, port: int, workers: LocalWorkers | None, on_requeue=None) -> None:
    """Serve the oracle until the search is over: some worker was told to stop, no trial is running or
    queued, and every local worker has exited. Dead local workers' trials are re-queued."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer, register = ktadapter.oracle_servicer(oracle)
    register(servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise NasError(f"cannot listen on {host}:{port}; is the port in use?")
    server.start()
    replacements = 0
    try:
        while True:
            time.sleep(0.5)
            if workers:
                for tuner_id, proc in list(workers.procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del workers.procs[tuner_id]
                    trial_id = requeue_trial_of(oracle, tuner_id)
                    if code != 0:
                        if on_requeue:
                            on_requeue(tuner_id, code, trial_id)
                        if not _finished(oracle) and replacements < MAX_REPLACEMENTS:
                            replacements += 1
                            workers.start()
                if not workers.procs:
                    if _finished(oracle) or replacements >= MAX_REPLACEMENTS:
                        break
                    if servicer.stop_triggered and not oracle.ongoing_trials and ktadapter.retry_queue(oracle):
                        workers.start()  # a re-queued trial and no one left to run it
            elif servicer.stop_triggered and _finished(oracle) and not oracle.tuner_ids:
                break
    finally:
        server.stop(grace=2)


def write_chief_file(run: RunDir, host: str, port: int, deadline: float | None) -> None:
    atomic_write_json(run.path / CHIEF_FILE, {"host": host, "port": port, "pid": os.getpid(),
                                               "deadline": deadline, "since": time.time()})


def read_chief_file(run: RunDir) -> dict:
    path = run.path / CHIEF_FILE
    if not path.is_file():
        raise NasError(f"{run.path}: no chief is serving this run (no {CHIEF_FILE}); start one with 'nas search EXP --chief'"
                       " or give --chief HOST:PORT")
    return json.loads(path.read_text())


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"

