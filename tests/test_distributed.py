"""Chief and workers on 127.0.0.1: one log, one truth; a worker killed mid-trial does not stall the search."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nas.errors import NasError
from nas.runlog import read_events, read_trials

from .conftest import REPO, cli, write_experiment

ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def nas_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in read_events(run / "trials.jsonl") if e["event"] == kind] if (run / "trials.jsonl").exists() else []


def wait(predicate, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError


def test_chief_and_two_workers_share_one_log(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 4, "epochs": 2})
    run = tmp_path / "res" / "tiny" / "r"
    chief = nas_process("search", exp, "--results", tmp_path / "res", "--run-id", "r", "--chief")
    wait(lambda: (run / "chief.json").exists())
    workers = [nas_process("worker", run, "--tuner-id", f"w{i}") for i in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read()
    out, err = chief.communicate(timeout=120)
    assert chief.returncode == 0, err
    finished = events(run, "trial_finished")
    assert sorted(e["trial_id"] for e in finished) == ["0", "1", "2", "3"]  # every trial exactly once
    assert {e["tuner_id"] for e in events(run, "trial_started")} == {"w0", "w1"}  # both workers worked
    assert not (run / "LOCK").exists() and not (run / "chief.json").exists()
    assert cli("leaderboard", run).code == 0


def test_worker_killed_mid_trial_is_replaced_and_its_trial_continues(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 4})
    run = tmp_path / "res" / "tiny" / "r"
    chief = nas_process("search", exp, "--results", tmp_path / "res", "--run-id", "r", "--workers", "2")
    wait(lambda: events(run, "epoch"))
    victim_trial = events(run, "epoch")[0]["trial_id"]
    victim = next(e for e in events(run, "trial_started") if e["trial_id"] == victim_trial)
    wait(lambda: (run / "trials" / victim_trial / "checkpoint.json").exists())  # an epoch is checkpointed
    os.kill(victim["pid"], signal.SIGKILL)
    out, err = chief.communicate(timeout=300)
    assert chief.returncode == 0, err
    assert sorted(e["trial_id"] for e in events(run, "trial_finished")) == ["0", "1", "2"]
    lost = events(run, "worker_lost")
    assert lost and lost[0]["trial_id"] == victim_trial
    restarts = [e for e in events(run, "trial_started") if e["trial_id"] == victim_trial]
    assert len(restarts) == 2 and restarts[1]["pid"] != victim["pid"]
    assert restarts[1]["resumed_from_epoch"] >= 1  # continued from its checkpoint, not from epoch 0
    trials = read_trials(run / "trials.jsonl")
    assert all(t.status == "finished" for t in trials.values())


def test_distributed_search_resumes_after_the_chief_dies(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 2})
    run = tmp_path / "res" / "tiny" / "r"
    chief = nas_process("search", exp, "--results", tmp_path / "res", "--run-id", "r", "--workers", "1")
    wait(lambda: events(run, "trial_finished"))
    started = events(run, "trial_started")
    chief.send_signal(signal.SIGKILL)
    chief.wait()
    for e in started:  # its worker too
        try:
            os.kill(e["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    res = cli("resume", run, "--workers", "2")
    assert res.code == 0, res.err
    assert sorted(e["trial_id"] for e in events(run, "trial_finished")) == ["0", "1", "2"]


def test_oracle_binds_to_loopback_unless_told_otherwise(capsys):
    from nas.cli import _chief_address

    args = SimpleNamespace(chief=True, workers=0, bind=None, allow_remote=False)
    host, port = _chief_address(args)
    assert host == "127.0.0.1" and port > 0
    with pytest.raises(NasError, match="needs --allow-remote"):
        _chief_address(SimpleNamespace(chief=True, workers=0, bind="0.0.0.0:8470", allow_remote=False))
    assert _chief_address(SimpleNamespace(chief=True, workers=0, bind="0.0.0.0:8470", allow_remote=True)) == ("0.0.0.0", 8470)
    assert "without authentication" in capsys.readouterr().err


def test_mirrored_strategy_option_runs_on_one_cpu_device(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 1, "epochs": 1},
                           search={"distribution": "mirrored"})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    assert len(events(tmp_path / "res" / "tiny" / "r", "trial_finished")) == 1
