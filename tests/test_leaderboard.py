"""`nas leaderboard`: every format parses, agrees with trials.jsonl, ranks as the search does, spans runs."""

import csv
import io
import json

import numpy as np
import pytest

from nas.runlog import read_trials
from nas.trial import rank_key

from .conftest import cli, write_experiment


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, tiny_data):
    base = tmp_path_factory.mktemp("second")
    exp = write_experiment(base / "e.toml", tiny_data, experiment={"name": "tiny2"}, search={"seed": 7})
    assert cli("search", exp, "--results", base / "res", "--run-id", "r2").code == 0
    return base / "res" / "tiny2" / "r2"


def test_formats_parse_and_agree_with_the_log(finished_run):
    logged = {t.trial_id: t for t in read_trials(finished_run / "trials.jsonl").values()}
    rows = json.loads(cli("leaderboard", finished_run, "--format", "json").out)
    assert {r["trial_id"] for r in rows} == set(logged)
    for r in rows:
        assert r["objective"] == logged[r["trial_id"]].objective
        assert r["threshold"] == logged[r["trial_id"]].threshold
        assert any(k.startswith("param_") for k in r)
    expected_order = [t.trial_id for t in sorted(logged.values(), key=rank_key)]
    assert [r["trial_id"] for r in rows] == expected_order
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))

    parsed = list(csv.DictReader(io.StringIO(cli("leaderboard", finished_run, "--format", "csv").out)))
    assert [r["trial_id"] for r in parsed] == expected_order
    assert [float(r["objective"]) for r in parsed] == [r["objective"] for r in rows]

    md = cli("leaderboard", finished_run, "--format", "md").out.strip().splitlines()
    assert md[0].startswith("| rank | run | trial_id") and len(md) == 2 + len(rows)

    table = cli("leaderboard", finished_run).out
    assert "objective" in table.splitlines()[0] and "split: val" in table
    header = table.splitlines()[0].split()
    assert "tie_break" not in header and "feasible" not in header  # same as pr_auc / all true: hidden
    assert "tie_break" in parsed[0] and "feasible" in parsed[0]  # CSV keeps every column


def test_two_runs_in_one_table(finished_run, second_run):
    rows = json.loads(cli("leaderboard", finished_run, second_run, "--format", "json").out)
    assert {r["run"] for r in rows} == {"tiny/r1", "tiny2/r2"}
    assert len(rows) == 4
    objectives = [(-r["objective"], -r["tie_break"]) for r in rows]
    assert objectives == sorted(objectives)
    top = json.loads(cli("leaderboard", finished_run, second_run, "--format", "json", "--top", "1").out)
    assert top == rows[:1]


def test_sort_status_and_bad_arguments(finished_run, tmp_path):
    rows = json.loads(cli("leaderboard", finished_run, "--format", "json", "--sort", "params").out)
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    assert json.loads(cli("leaderboard", finished_run, "--format", "json", "--status", "failed").out) == []
    res = cli("leaderboard", finished_run, "--sort", "nope")
    assert res.code == 2 and "no such column" in res.err
    res = cli("leaderboard", tmp_path)
    assert res.code == 2 and "no trials.jsonl" in res.err


def test_leaderboard_ranks_as_the_search_oracle_did(finished_run, second_run):
    """KerasTuner's own trial records (the oracle's scores) order trials exactly as the leaderboard does."""
    for run in (finished_run, second_run):
        scores = {}
        for path in (run / "tuner" / "search").glob("trial_*/trial.json"):
            rec = json.loads(path.read_text())
            scores[rec["trial_id"]] = rec["score"]
        rows = json.loads(cli("leaderboard", run, "--format", "json").out)
        by_oracle = sorted(scores, key=lambda t: (-scores[t], t))
        assert [r["trial_id"] for r in rows] == by_oracle


def test_each_trial_carries_a_bootstrap_interval_of_its_objective(finished_run):
    for r in json.loads(cli("leaderboard", finished_run, "--format", "json").out):
        lo, hi = r["objective_ci95"]
        assert 0 <= lo <= hi <= 1


def test_report_writes_markdown_and_valid_pngs(finished_run, tmp_path):
    res = cli("report", finished_run, "--out", tmp_path / "rep")
    assert res.code == 0, res.err
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "val" in page and "Pareto" in page
    for name in ("objective_over_trials.png", "pareto.png", "pr_curves.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
        assert f"({name})" in page


def test_pareto_front():
    from nas.report import pareto_front

    cost = np.array([10, 20, 30, 15, 40])
    value = np.array([0.5, 0.7, 0.9, 0.4, 0.8])
    assert pareto_front(cost, value).tolist() == [0, 1, 2]


def test_tensorboard_logs_with_hparams_per_trial(finished_run):
    for tid in ("0", "1"):
        board = finished_run / "tensorboard" / tid
        assert any(board.rglob("events.out.tfevents.*")), tid
        assert any((board / "hparams").glob("events.out.tfevents.*")), tid


def test_live_progress_bar_on_a_terminal(monkeypatch):
    import io

    from nas.console import TrialPrinter

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err, out = Terminal(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    sink = TrialPrinter()
    sink({"event": "search_started", "tuner": "random", "space": "s", "max_trials": 2, "train": 5, "val": 3,
          "skipped": 0, "resumed": False, "balance": {"train": {"n": 5, "positives": 2}}, "decoded": 8})
    sink({"event": "trial_finished", "trial_id": "0", "objective": 0.75, "objective_ci95": [0.5, 1.0], "threshold": 0.4,
          "pr_auc": 0.8, "params": 100, "epochs_run": 2, "seconds": 1.0})
    assert "trials 1/2" in err.getvalue() and "best 0.750" in err.getvalue()
    assert "trial 0: val precision@recall 0.750 [0.50-1.00]" in out.getvalue()


def test_recycled_worker_reports_elapsed_from_the_search_start(monkeypatch, capsys):
    """A worker started by `search.recycle_every` prints time since the search began, not since it started."""
    import time

    from nas.console import TrialPrinter
    from nas.runlog import SEARCH_T0_ENV

    monkeypatch.setenv(SEARCH_T0_ENV, repr(time.time() - 1000))
    sink = TrialPrinter()
    sink({"event": "trial_finished", "trial_id": "10", "objective": 0.5, "threshold": 0.4, "pr_auc": 0.6,
          "params": 100, "epochs_run": 2, "seconds": 1.0})
    elapsed = int(capsys.readouterr().out.rsplit("elapsed ", 1)[1].split("s")[0])
    assert 1000 <= elapsed < 1100
