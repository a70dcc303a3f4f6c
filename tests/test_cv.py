"""Cross-validated selection (objective.folds = K): folds grouped and stratified, trials scored on pooled
out-of-fold probabilities, racing against the incumbent, fold-level resume after kill -9, and an export
that averages the fold models with the out-of-fold threshold."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nas.objective import precision_at_recall
from nas.runlog import read_events, read_trials

from .conftest import REPO, cli, write_experiment

FOLDS = 3


def cv_experiment(path, data, **sections):
    objective = {"recall_floor": 0.9, "folds": FOLDS, "racing": False, **sections.pop("objective", {})}
    return write_experiment(path, data, objective=objective, **{"budget": {"max_trials": 2, "epochs": 3}, **sections})


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, easy_data):
    base = tmp_path_factory.mktemp("cv")
    res = cli("search", cv_experiment(base / "e.toml", easy_data), "--results", base / "res", "--run-id", "r")
    assert res.code == 0, res.err
    assert "3-fold cross-validation over 80 train+val frames" in res.out
    return base / "res" / "tiny" / "r"


def oof_labels(run):
    """Labels in the order trials store out-of-fold probabilities: fold by fold, rows in split.csv order."""
    rows = [r for r in csv.DictReader(open(run / "split.csv")) if r["fold"]]
    rows.sort(key=lambda r: int(r["fold"]))
    return np.array([r["label"] == "positive" for r in rows], dtype=int), rows


def test_folds_are_grouped_stratified_and_cover_train_and_val_only(cv_run):
    rows = list(csv.DictReader(open(cv_run / "split.csv")))
    assert {r["fold"] for r in rows if r["split"] == "test"} == {""}
    assert {r["fold"] for r in rows if r["split"] != "test"} == {"0", "1", "2"}
    for fold in "012":
        members = [r for r in rows if r["fold"] == fold]
        assert {r["label"] for r in members} == {"positive", "negative"}
        others = {r["group"] for r in rows if r["fold"] not in ("", fold)}
        assert not {r["group"] for r in members} & others  # a session never spans two folds


def test_each_trial_trains_every_fold_once_and_scores_the_pooled_out_of_fold_probabilities(cv_run):
    events = read_events(cv_run / "trials.jsonl")
    y, _ = oof_labels(cv_run)
    for tid, rec in read_trials(cv_run / "trials.jsonl").items():
        folds = [e["fold"] for e in events if e["event"] == "fold_finished" and e["trial_id"] == tid]
        assert folds == [0, 1, 2]
        assert (rec.folds_done, rec.folds_total, rec.split, rec.raced_out) == (3, 3, "oof", False)
        assert {e.get("fold") for e in rec.epochs} == {0, 1, 2} and len(rec.epochs) == 3 * 3
        oof = np.load(cv_run / "trials" / tid / "oof_probs.npy")
        assert len(oof) == len(y) == 80
        op = precision_at_recall(y, oof, 0.9)
        assert rec.objective == pytest.approx(op.precision, abs=1e-12)
        assert rec.threshold == pytest.approx(op.threshold, abs=1e-12)
        for k in range(FOLDS):
            assert (cv_run / "trials" / tid / f"fold-{k}" / "best.weights.h5").is_file()
            assert not list((cv_run / "trials" / tid / f"fold-{k}").glob("ckpt-*"))  # checkpoints cleared
    rows = json.loads(cli("leaderboard", cv_run, "--format", "json").out)
    assert {r["folds"] for r in rows} == {"3/3"} and {r["split"] for r in rows} == {"oof"}
    assert "folds" in cli("leaderboard", cv_run).out.splitlines()[0]


def test_export_averages_the_fold_models_with_the_out_of_fold_threshold(cv_run, tmp_path):
    res = cli("export", cv_run, "--out", tmp_path / "exp")
    assert res.code == 0, res.err
    card = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    best = min(read_trials(cv_run / "trials.jsonl").values(), key=lambda r: (-r.objective, -r.tie_break, r.trial_id))
    assert card["trial_id"] == best.trial_id and card["folds"] == FOLDS and card["threshold_from"] == "oof"
    y, _ = oof_labels(cv_run)
    oof = np.load(cv_run / "trials" / best.trial_id / "oof_probs.npy")
    assert card["threshold"] == pytest.approx(precision_at_recall(y, oof, 0.9).threshold)
    assert card["metrics"]["oof"]["n"] == 80 and card["metrics"]["test"]["n"] == 16
    assert card["search_estimate"]["objective"] == pytest.approx(best.objective)
    # the card names the session that sets the threshold, and what the same rule gives without it
    _, rows = oof_labels(cv_run)
    groups = np.array([r["group"] for r in rows])
    recall = {g: float(np.mean(oof[(groups == g) & (y == 1)] >= card["threshold"])) for g in np.unique(groups)}
    ts = card["threshold_sessions"]
    assert ts["recall"] == pytest.approx(recall, abs=1e-4) and recall[ts["hardest"]] == min(recall.values())
    rest = groups != ts["hardest"]
    assert ts["without_hardest"]["threshold"] == pytest.approx(precision_at_recall(y[rest], oof[rest], 0.9).threshold)
    assert f"`{ts['hardest']}` (the hardest" in (tmp_path / "exp" / "MODEL_CARD.md").read_text()

    import keras

    model = keras.saving.load_model(tmp_path / "exp" / "model.keras")
    members = [layer.name for layer in model.layers if layer.name.startswith("trial_")]
    assert members == [f"trial_{best.trial_id}_fold_{k}" for k in range(FOLDS)]


def test_a_trial_that_cannot_beat_the_incumbent_stops_after_one_fold(tmp_path, easy_data, monkeypatch):
    from nas.search import tuner as tuner_mod

    real, calls = tuner_mod.build_model, {"n": 0}

    def untrainable_after_the_first_trial(values, *rest):
        calls["n"] += 1
        if calls["n"] <= FOLDS:
            return real(values, *rest)
        # trial 1 cannot learn: its rate is ~0 and its output layer is zero, so it says 0.5 to every frame
        model = real({**values, "optimizer.learning_rate": 1e-12}, *rest)
        model.layers[-1].kernel.assign(np.zeros(model.layers[-1].kernel.shape))
        return model

    monkeypatch.setattr(tuner_mod, "build_model", untrainable_after_the_first_trial)
    exp = cv_experiment(tmp_path / "e.toml", easy_data, objective={"racing": True})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    trials = read_trials(tmp_path / "res" / "tiny" / "r" / "trials.jsonl")
    assert (trials["0"].folds_done, trials["0"].raced_out) == (3, False)
    assert (trials["1"].folds_done, trials["1"].raced_out, trials["1"].usable) == (1, True, True)
    assert "raced out after 1 of 3 folds" in trials["1"].reason and "incumbent trial 0" in trials["1"].reason
    rows = json.loads(cli("leaderboard", tmp_path / "res" / "tiny" / "r", "--format", "json").out)
    assert [(r["trial_id"], r["folds"]) for r in rows] == [("0", "3/3"), ("1", "1/3")]
    res = cli("export", tmp_path / "res" / "tiny" / "r", "--trial", "1", "--out", tmp_path / "x")
    assert res.code == 2 and "trained 1 of 3 folds" in res.err
    # an ensemble averages whole trials only: the raced-out one is not counted (before: it was taken, then refused)
    res = cli("export", tmp_path / "res" / "tiny" / "r", "--ensemble", "2", "--out", tmp_path / "ens")
    assert res.code == 2 and ("--ensemble 2 needs 2 finished feasible trials that trained every fold; the run has 1 "
                              "(1 more raced out or cut short before their last fold)") in res.err, res.err


def test_kill_9_mid_fold_then_resume_trains_each_fold_exactly_once(tmp_path, easy_data):
    exp = cv_experiment(tmp_path / "e.toml", easy_data, budget={"max_trials": 1, "epochs": 4})
    run = tmp_path / "res" / "tiny" / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", str(exp), "--results", str(tmp_path / "res"), "--run-id", "r"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def in_second_fold():
        evs = read_events(run / "trials.jsonl") if (run / "trials.jsonl").exists() else []
        return any(e["event"] == "epoch" and e.get("fold") == 1 and e["epoch"] >= 2 for e in evs)

    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not in_second_fold():
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = cli("resume", run)
    assert res.code == 0, res.err
    events = read_events(run / "trials.jsonl")
    assert sorted(e["fold"] for e in events if e["event"] == "fold_finished") == [0, 1, 2]
    assert sum(e["event"] == "trial_finished" for e in events) == 1
    restarted = [e for e in events if e["event"] == "trial_started"][-1]
    # fold 0 kept; fold 1 continued from a checkpoint (epoch 1 is on disk before epoch 2 is logged)
    assert restarted["folds_done"] == 1 and restarted["resumed_from_epoch"] >= 1


def test_bfloat16_training_exports_a_float32_model_whose_probabilities_match(tmp_path, easy_data):
    """search.precision = mixed_bfloat16 trains in bfloat16; the export serves float32, recalibrates on the
    float32 probabilities, and states how far they moved from the scored ones (at most 0.02 here)."""
    exp = cv_experiment(tmp_path / "e.toml", easy_data, search={"precision": "mixed_bfloat16", "tuner": "random"},
                        budget={"max_trials": 1, "epochs": 3})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    assert read_trials(run / "trials.jsonl")["0"].precision_policy == "mixed_bfloat16"
    started = read_events(run / "trials.jsonl")[0]
    assert started["precision"]["policy"] == "mixed_bfloat16"
    assert cli("export", run).code == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert (card["trained_in"], card["serves_in"]) == ("mixed_bfloat16", "float32")
    assert 0 < card["max_probability_change_from_search"] <= 0.02
    import keras

    model = keras.saving.load_model(run / "export" / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers[1].layers} == {"float32"}


def test_thresholds_benchmark_rescores_an_export_as_export_scored_it(cv_run, tmp_path, monkeypatch, capsys):
    """benchmarks/thresholds.py: the plain rule reproduces the card's threshold (this run has no
    recall_confidence) and its test figures; every rule is reported, the JSON last."""
    import shutil

    sys.path.insert(0, str(REPO / "benchmarks"))
    import thresholds

    run = tmp_path / "run"
    shutil.copytree(cv_run, run, ignore=shutil.ignore_patterns("export"))
    assert cli("export", run).code == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    monkeypatch.setattr(sys, "argv", ["thresholds.py", "--rules", "plain,sessions:0.9", str(run)])
    thresholds.main()
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])[str(run)]
    plain = res["rules"]["plain"]
    assert plain["threshold"] == pytest.approx(card["threshold"])
    assert plain["test_precision"] == pytest.approx(card["metrics"]["test"]["precision"])
    assert plain["test_recall"] == pytest.approx(card["metrics"]["test"]["recall"])
    assert set(res["rules"]) == {"plain", "sessions:0.9"} and out[0] == "| run | plain | sessions:0.9 |"
    with pytest.raises(SystemExit, match="sessions:C"):
        thresholds.rescore(run, ["sessions"])
