"""`nas search` and `nas resume` end to end on tiny data: the log, the exact objective, every tuner,
seeded repeatability, the time budget, a kill -9 mid-search, and the one-writer lock."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from nas.objective import precision_at_recall
from nas.runlog import read_events, read_trials

from .conftest import REPO, cli, write_experiment

REQUIRED_FINISHED = {"trial_id", "objective", "threshold", "hyperparameters", "seconds", "params", "time"}


def finished(run):
    return [e for e in read_events(run / "trials.jsonl") if e["event"] == "trial_finished"]


def val_labels(run):
    rows = list(csv.DictReader(open(run / "split.csv")))
    return np.array([r["label"] == "positive" for r in rows if r["split"] == "val"], dtype=int)


def test_search_writes_the_run_layout_and_a_complete_log(finished_run):
    for name in ("experiment.toml", "search_space.yaml", "split.csv", "trials.jsonl", "tuner"):
        assert (finished_run / name).exists(), name
    assert not (finished_run / "LOCK").exists()
    events = read_events(finished_run / "trials.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "search_started" and kinds[-1] == "search_ended"
    assert kinds.count("trial_started") == kinds.count("trial_finished") == 2
    assert kinds.count("epoch") == 4
    for ev in finished(finished_run):
        assert REQUIRED_FINISHED <= set(ev)
        assert ev["params"] > 0 and ev["latency_ms"] > 0 and ev["split"] == "val"


def test_logged_objective_equals_recomputation_from_saved_val_probabilities(finished_run):
    y = val_labels(finished_run)
    for ev in finished(finished_run):
        prob = np.load(finished_run / "trials" / ev["trial_id"] / "val_probs.npy")
        op = precision_at_recall(y, prob, 0.9)
        assert ev["objective"] == pytest.approx(op.precision, abs=1e-12)
        assert ev["threshold"] == pytest.approx(op.threshold, abs=1e-12)
        assert ev["recall"] >= 0.9


def test_search_never_reads_the_test_split(finished_run):
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    n_train = sum(r["split"] == "train" for r in rows)
    n_val = sum(r["split"] == "val" for r in rows)
    started = read_events(finished_run / "trials.jsonl")[0]
    assert (started["train"], started["val"]) == (n_train, n_val)
    for ev in finished(finished_run):
        assert len(np.load(finished_run / "trials" / ev["trial_id"] / "val_probs.npy")) == n_val


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband"])
def test_other_tuners_run_end_to_end(tmp_path, tiny_data, tuner):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"tuner": tuner, "bayesian_initial_points": 1},
                           budget={"max_trials": 3, "epochs": 2})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    done = finished(run)
    assert len(done) == 3 and len({e["trial_id"] for e in done}) == 3
    if tuner == "hyperband":
        assert all("epochs" in e["fidelity"] for e in done)


def test_same_seed_same_hyperparameters_and_leaderboard_order(tmp_path, tiny_data, finished_run):
    exp = write_experiment(tmp_path / "e.toml", tiny_data)
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "again").code == 0
    again = tmp_path / "res" / "tiny" / "again"
    first, second = finished(finished_run), finished(again)
    assert [e["hyperparameters"] for e in first] == [e["hyperparameters"] for e in second]
    assert [e["objective"] for e in first] == pytest.approx([e["objective"] for e in second])
    order = lambda run: [r["trial_id"] for r in json.loads(cli("leaderboard", run, "--format", "json").out)]  # noqa: E731
    assert order(finished_run) == order(again)


def test_time_budget_ends_cleanly_and_resume_completes_the_trials(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 2})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r", "--time-budget", "0.5")
    assert res.code == 0, res.err
    assert "search ended: time budget reached" in res.out
    run = tmp_path / "res" / "tiny" / "r"
    # a budget shorter than one trial (a slower machine): the first trial finishes anyway, said once, and the
    # search ends after it with a model to export
    assert "time budget reached before any trial finished: trial 0 goes on to finish" in res.out
    passed = [e for e in read_events(run / "trials.jsonl") if e["event"] == "budget_passed"]
    assert [e["trial_id"] for e in passed] == ["0"] and passed[0]["seconds_left"] >= 0  # one epoch of two to go
    assert [e["trial_id"] for e in finished(run)] == ["0"]
    assert finished(run)[0]["epochs_run"] == 2
    assert cli("export", run, "--out", tmp_path / "x").code == 0
    res = cli("resume", run, "--time-budget", "0")
    assert res.code == 0, res.err
    trials = read_trials(run / "trials.jsonl")
    assert sorted(trials) == ["0", "1", "2"]
    assert all(t.status == "finished" for t in trials.values())
    assert len(finished(run)) == 3  # each trial finished exactly once


def test_kill_9_mid_search_then_resume_finishes_every_trial_exactly_once(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 2})
    results = tmp_path / "res"
    run = results / "tiny" / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(exp), "--results", str(results), "--run-id", "r"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run / "trials.jsonl").exists() and finished(run):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "LOCK").exists()  # left behind by the dead process
    before = len(finished(run))
    res = cli("resume", run)
    assert res.code == 0, res.err
    done = finished(run)
    assert len(done) == 3 > before, (res.out, res.err, (run / "trials.jsonl").read_text()[-3000:])
    assert sorted(e["trial_id"] for e in done) == ["0", "1", "2"]
    assert cli("leaderboard", run, "--format", "json").code == 0


def test_second_writer_is_refused_naming_the_holder(tmp_path, finished_run):
    lock = finished_run / "LOCK"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
    try:
        res = cli("resume", finished_run)
    finally:
        lock.unlink()
    assert res.code == 2
    assert f"locked by process {os.getpid()}" in res.err


def test_existing_run_id_is_refused(finished_run, tiny_data, tmp_path):
    exp = write_experiment(tmp_path / "e.toml", tiny_data)
    res = cli("search", exp, "--results", finished_run.parent.parent, "--run-id", "r1")
    assert res.code == 2 and "already exists" in res.err and "nas resume" in res.err


WARM_SPACE = """
blocks:
  count: {int: [1, 3]}
  filters: {choice: [4, 8]}
optimizer:
  learning_rate: {float: [1.0e-3, 1.0e-2], sampling: log}
  schedule: cosine
warm_start:
  - {blocks.count: 2, blocks.filters: 8, optimizer.learning_rate: 3.0e-3}
"""


def test_warm_start_is_tried_first_and_never_again_after_a_resume(tmp_path, tiny_data):
    space = tmp_path / "warm.yaml"
    space.write_text(WARM_SPACE)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"space": str(space), "tuner": "bayesian",
                           "bayesian_initial_points": 2}, budget={"max_trials": 1, "epochs": 2})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    warm = {"blocks.count": 2, "blocks.filters": 8, "optimizer.learning_rate": 3.0e-3}
    assert [e["hyperparameters"] for e in finished(run)] == [warm]
    res = cli("resume", run, "--max-trials", "3")
    assert res.code == 0, res.err
    later = [e["hyperparameters"] for e in finished(run)][1:]
    assert len(later) == 2 and warm not in later


def test_warm_start_with_hyperband_is_refused_naming_the_space(tmp_path, tiny_data):
    space = tmp_path / "warm.yaml"
    space.write_text(WARM_SPACE)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"space": str(space), "tuner": "hyperband"})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 2
    assert "warm.yaml: warm_start works with search.tuner random or bayesian" in res.err


class _Log:
    def __init__(self, records):
        self.records, self.events = records, []

    def trials(self):
        return self.records

    def emit(self, event, **fields):
        self.events.append((event, fields))


def test_only_a_first_trial_goes_on_past_the_deadline():
    from types import SimpleNamespace

    from nas.search.tuner import NasTuner
    from nas.trial import TrialRecord, TrialStatus

    tuner = SimpleNamespace(log=_Log({"0": TrialRecord(trial_id="0", status=TrialStatus.RUNNING)}), overran=set(),
                            tuner_id="tuner0", exp=SimpleNamespace(budget=SimpleNamespace(time_budget=900)),
                            epochs_planned=6)
    ask = lambda tid: NasTuner.stops_at_deadline(tuner, tid)  # noqa: E731
    assert ask("0") is False and ask("0") is False  # nothing finished yet: it goes on, said once
    assert [(str(e), f["trial_id"], f["budget_s"]) for e, f in tuner.log.events] == [("budget_passed", "0", 900)]
    tuner.log.records["1"] = TrialRecord(trial_id="1", status=TrialStatus.FINISHED, feasible=False)
    assert ask("0") is False  # an infeasible trial has no model to export
    tuner.log.records["2"] = TrialRecord(trial_id="2", status=TrialStatus.FINISHED)  # another worker's, say
    assert ask("0") is True and ask("3") is True
    assert len(tuner.log.events) == 1


@pytest.mark.parametrize("stops", [True, False])
def test_training_stops_at_a_passed_deadline_only_when_told_to(tmp_path, stops):
    import keras

    from nas.checkpoint import TrialProgress

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    asked = []
    progress = TrialProgress(lambda *a, **k: None, "0", tmp_path, deadline=time.time() - 1,
                             stops_at_deadline=lambda: asked.append(1) or stops)
    history = model.fit(np.zeros((8, 2)), np.zeros(8), epochs=3, verbose=0, callbacks=[progress])
    assert len(history.history["loss"]) == (1 if stops else 3)
    assert progress.out_of_time is stops and len(asked) == (1 if stops else 3)


def test_how_long_a_trial_goes_on_past_the_deadline_is_read_from_its_pace():
    from nas.search.tuner import seconds_left
    from nas.trial import TrialRecord, TrialStatus

    rec = TrialRecord(trial_id="0", status=TrialStatus.RUNNING, started=100.0,
                      epochs=({"epoch": 1, "fold": 0, "time": 110.0}, {"epoch": 2, "fold": 0, "time": 120.0}))
    assert seconds_left(rec, 6) == 40.0  # 10 s an epoch, 4 epochs to go
    resumed = rec.replace(epochs=({"epoch": 1, "fold": 2, "time": 50.0}, *rec.epochs))
    assert seconds_left(resumed, 6) == 30.0  # an earlier process's epoch counts as done, not in the pace
    assert seconds_left(rec.replace(epochs=()), 6) is None and seconds_left(None, 6) is None


def test_the_loss_a_space_names_is_the_loss_its_trials_train_and_validate_with(tmp_path, tiny_data):
    """The same seeded trial, its space once without a loss section and once with loss.focal_gamma 2: the focal
    trial's logged validation loss is far below the plain one ((1 - p_t)^2 <= 1 for every frame, about 1/4
    while predictions sit near 0.5 after one epoch), and the run's frozen space keeps the key."""
    text = (REPO / "search_spaces" / "small_cnn.yaml").read_text()
    val_loss = {}
    for name, extra in (("plain", ""), ("focal", "loss:\n  focal_gamma: 2.0\n")):
        space = tmp_path / f"{name}.yaml"
        space.write_text(text + extra)
        exp = write_experiment(tmp_path / f"{name}.toml", tiny_data, search={"space": str(space)},
                               budget={"max_trials": 1, "epochs": 1})
        assert cli("search", exp, "--results", tmp_path / name, "--run-id", "r").code == 0
        run = tmp_path / name / "tiny" / "r"
        assert ("focal_gamma: 2.0" in (run / "search_space.yaml").read_text()) == (name == "focal")
        epochs = [e for e in read_events(run / "trials.jsonl") if e["event"] == "epoch"]
        val_loss[name] = epochs[-1]["val_loss"]
    assert 0 < val_loss["focal"] < 0.6 * val_loss["plain"], val_loss
