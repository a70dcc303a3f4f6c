"""The search driver's promises: constraints make trials infeasible (never winners), failures are data,
too many failures in a row stop the search with a clear message, and finished work is kept."""

import json

import tensorflow as tf

from nas.runlog import read_events, read_trials
from nas.search import tuner as tuner_mod

from .conftest import cli, write_experiment


def test_constraint_makes_trials_infeasible_never_winners(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 4, "epochs": 1},
                           constraints={"max_params": 3000})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    trials = read_trials(run / "trials.jsonl")
    infeasible = [t for t in trials.values() if t.feasible is False]
    feasible = [t for t in trials.values() if t.feasible is True]
    assert infeasible and feasible, "this seed samples architectures on both sides of the limit"
    for t in infeasible:
        assert "max_params 3000" in t.reason and t.params > 3000 and t.epochs_run == 0
    rows = json.loads(cli("leaderboard", run, "--format", "json", "--status", "all").out)
    assert all(r["feasible"] for r in rows[: len(feasible)])  # every feasible trial ranks above
    assert {r["status"] for r in rows[len(feasible):]} == {"infeasible"}
    card_res = cli("export", run)
    assert card_res.code == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["params"] <= 3000


def test_failed_trials_are_logged_and_the_search_goes_on(tmp_path, tiny_data, monkeypatch):
    real = tuner_mod.build_model
    calls = {"n": 0}

    def flaky(values, size, floor, *rest):
        calls["n"] += 1
        model = real(values, size, floor, *rest)
        if calls["n"] == 1:  # trial 0: out of memory while building
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [64,64,3,3]")
        if calls["n"] == 2:  # trial 1: weights that make the loss NaN
            model.layers[-1].kernel.assign(tf.fill(model.layers[-1].kernel.shape, float("nan")))
        return model

    monkeypatch.setattr(tuner_mod, "build_model", flaky)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    trials = read_trials(tmp_path / "res" / "tiny" / "r" / "trials.jsonl")
    assert trials["0"].status == "failed" and "OOM" in trials["0"].reason
    assert trials["1"].status == "failed" and "NaN" in trials["1"].reason
    assert trials["2"].status == "finished"
    assert "trial 0: FAILED" in res.out and "trial 1: FAILED" in res.out


def test_too_many_consecutive_failures_stop_the_search_keeping_finished_trials(tmp_path, tiny_data, monkeypatch):
    real = tuner_mod.build_model
    calls = {"n": 0}

    def breaks_after_one(values, size, floor, *rest):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("a combination this space cannot build")
        return real(values, size, floor, *rest)

    monkeypatch.setattr(tuner_mod, "build_model", breaks_after_one)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 8, "epochs": 1},
                           search={"max_consecutive_failures": 2})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 2
    assert "2 consecutive trials failed" in res.err and "finished trials are kept" in res.err
    trials = read_trials(tmp_path / "res" / "tiny" / "r" / "trials.jsonl")
    assert trials["0"].status == "finished"
    assert [trials[t].status for t in ("1", "2")] == ["failed", "failed"]
    assert not (tmp_path / "res" / "tiny" / "r" / "LOCK").exists()


def test_workers_are_recycled_every_k_trials_and_each_trial_runs_once(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 3, "epochs": 1},
                           search={"recycle_every": 1})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    events = read_events(tmp_path / "res" / "tiny" / "r" / "trials.jsonl")
    finished = [e for e in events if e["event"] == "trial_finished"]
    assert sorted(e["trial_id"] for e in finished) == ["0", "1", "2"]
    assert len({e["pid"] for e in finished}) == 3  # one fresh worker process per trial
    assert all(e["rss_mb"] > 0 for e in finished)
    assert sum(e["event"] == "worker_recycled" for e in events) == 2  # no idle worker at the end
    assert not (tmp_path / "res" / "tiny" / "r" / "LOCK").exists()


def test_autokeras_tuner_end_to_end_offline_and_its_export_serves_without_autokeras(tmp_path, tiny_data):
    import subprocess
    import sys

    space = tmp_path / "ak.yaml"
    space.write_text("autokeras:\n  block_type: vanilla\n  normalize: {choice: [false, true]}\n  augment: false\n  dropout: 0.0\n")
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"tuner": "autokeras", "space": str(space)},
                           budget={"max_trials": 2, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    finished = [e for e in read_events(run / "trials.jsonl") if e["event"] == "trial_finished"]
    assert len(finished) == 2
    assert any(k.startswith("conv_block") for k in finished[0]["hyperparameters"])  # AutoKeras's own dimensions
    assert cli("export", run).code == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["keras_file_needs"].startswith("autokeras")
    best = next(e for e in finished if e["trial_id"] == card["trial_id"])
    assert card["metrics"]["val"]["precision_at_floor"] == best["objective"]  # same weights as scored
    frame = sorted((tiny_data / "positive").glob("*.tif"))[0]
    code = ("import sys, numpy as np, tensorflow as tf, tifffile; m = tf.saved_model.load(sys.argv[1]); "
            "p = m.signatures['serve_uint16'](frames=tf.constant(tifffile.imread(sys.argv[2])[None]))['probability']; "
            "assert 'autokeras' not in sys.modules and 'nas' not in sys.modules; print(float(p.numpy()[0]))")
    out = subprocess.run([sys.executable, "-c", code, str(run / "export" / "saved_model"), str(frame)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0.0 <= float(out.stdout.strip().splitlines()[-1]) <= 1.0


def test_space_and_tuner_must_fit(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"tuner": "autokeras"})
    res = cli("search", exp, "--results", tmp_path / "res")
    assert res.code == 2 and "needs an autokeras: section" in res.err
    space = tmp_path / "ak_loss.yaml"
    space.write_text("autokeras:\n  block_type: vanilla\nloss:\n  focal_gamma: 2.0\n")
    exp = write_experiment(tmp_path / "e2.toml", tiny_data, search={"tuner": "autokeras", "space": str(space)})
    res = cli("search", exp, "--results", tmp_path / "res2")
    assert res.code == 2 and f"{space}: loss: is for the CNN families" in res.err, res.err
