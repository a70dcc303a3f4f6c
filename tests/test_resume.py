"""Resume loses at most one epoch, state survives kill -9 anywhere, one writer, edits are refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.runlog import read_events

from .conftest import REPO, cli, write_experiment

ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def nas_process(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def events(run: Path, kind: str | None = None) -> list[dict]:
    evs = read_events(run / "trials.jsonl")
    return [e for e in evs if kind is None or e["event"] == kind]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError("the search made no progress in time")


def test_resume_refuses_an_edited_experiment_or_space_and_shows_the_change(tmp_path, tiny_data):
    space = tmp_path / "space.yaml"
    shutil.copy(REPO / "search_spaces" / "small_cnn.yaml", space)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"space": str(space)}, budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    original = exp.read_text()

    exp.write_text(original.replace("recall_floor = 0.9", "recall_floor = 0.8"))
    res = cli("resume", run)
    assert res.code == 2 and "refusing to resume" in res.err and "objective.recall_floor: 0.9 -> 0.8" in res.err

    exp.write_text(original.replace("max_trials = 1", "max_trials = 5"))  # the budget may change
    assert cli("resume", run, "--max-trials", "2").code == 0
    assert len(events(run, "trial_finished")) == 2

    exp.write_text(original)
    space.write_text(space.read_text().replace("filters: {choice: [8, 16, 24]}", "filters: {choice: [8, 64]}"))
    res = cli("resume", run)
    assert res.code == 2 and str(space) in res.err and "+  filters: {choice: [8, 64]}" in res.err


def test_sigterm_finishes_the_epoch_saves_and_resume_continues_from_it(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 1, "epochs": 6})
    run = tmp_path / "res" / "tiny" / "r"
    proc = nas_process("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert wait_for(lambda: (run / "trials.jsonl").exists() and events(run, "epoch"), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"nas resume {run}" in err
    assert events(run, "trial_interrupted") and not (run / "LOCK").exists()
    saved = json.loads((run / "trials" / "0" / "checkpoint.json").read_text())
    done = max(e["epoch"] for e in events(run, "epoch"))
    assert saved["epoch"] == done  # the interrupted epoch was finished and checkpointed

    assert cli("resume", run).code == 0
    restarted = events(run, "trial_started")[-1]
    assert restarted["resumed_from_epoch"] == done
    epochs = [e["epoch"] for e in events(run, "epoch")]
    assert epochs == list(range(1, 7))  # continued, not restarted: no epoch ran twice
    assert len(events(run, "trial_finished")) == 1
    assert not (run / "trials" / "0" / "checkpoint.json").exists()


def test_torn_last_log_line_is_dropped_on_resume(tmp_path, finished_run):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    with open(run / "trials.jsonl", "a") as fh:
        fh.write('{"event": "trial_finished", "trial_id": "9", "objec')
    assert len(events(run, "trial_finished")) == 2  # readers skip the torn line
    assert cli("resume", run).code == 0
    lines = (run / "trials.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert sorted(e["trial_id"] for e in events(run, "trial_finished")) == ["0", "1"]


def torture(tmp_path: Path, data: Path, kills: int, seed: int, trials: int = 3, epochs: int = 3) -> dict:
    """Kill a tiny search with SIGKILL at random moments, resuming after each; then check everything.
    Returns what happened, so each test can also check that the kills really landed."""
    rng = random.Random(seed)
    exp = write_experiment(tmp_path / "e.toml", data, budget={"max_trials": trials, "epochs": epochs})
    run = tmp_path / "res" / "tiny" / "r"
    done_kills = 0
    for k in range(kills):
        args = ("search", exp, "--results", tmp_path / "res", "--run-id", "r") if k == 0 else ("resume", run)
        seen = len(events(run)) if (run / "trials.jsonl").exists() else 0
        proc = nas_process(*args)
        progressed = wait_for(lambda seen=seen: (run / "trials.jsonl").exists() and len(events(run)) > seen + 1, proc)
        if not progressed:  # the search completed before we could kill it
            assert proc.wait() == 0, proc.stderr.read()
            break
        time.sleep(rng.uniform(0.0, 0.6))  # sometimes lands in a checkpoint or log write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_kills += 1
    res = cli("resume", run)
    assert res.code == 0, res.err

    finished = events(run, "trial_finished")
    ids = sorted(e["trial_id"] for e in finished)
    assert ids == sorted(set(ids)) and len(ids) == trials  # each trial complete exactly once
    for path in run.rglob("*.json"):
        if ".tmp" not in path.name:
            json.loads(path.read_text())  # no JSON anywhere is truncated
    rows = json.loads(cli("leaderboard", run, "--format", "json").out)
    assert len(rows) == trials  # the leaderboard is whole
    epoch_events = events(run, "epoch")
    assert len(epoch_events) <= trials * epochs + done_kills  # at most one epoch redone per kill
    for start in events(run, "trial_started"):
        if start.get("resumed_from_epoch"):
            later = [e for e in epoch_events if e["trial_id"] == start["trial_id"] and e["time"] > start["time"]]
            if later:
                assert later[0]["epoch"] == start["resumed_from_epoch"] + 1  # continued, not restarted
    return {"kills": done_kills, "finished": ids, "epochs_logged": len(epoch_events)}


def test_kill_9_torture_a_few_kills(tmp_path, tiny_data):
    outcome = torture(tmp_path, tiny_data, kills=3, seed=1)
    assert outcome["kills"] == 3, "the search finished before every planned kill landed"
    assert outcome["finished"] == ["0", "1", "2"]


@pytest.mark.slow
def test_kill_9_torture_twenty_kills(tmp_path, tiny_data):
    outcome = torture(tmp_path, tiny_data, kills=20, seed=2, trials=6, epochs=5)
    assert outcome["kills"] == 20, "the search finished before every planned kill landed"
    assert outcome["finished"] == ["0", "1", "2", "3", "4", "5"]
