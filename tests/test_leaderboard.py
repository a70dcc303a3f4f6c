"""`nas leaderboard`: every format parses, agrees with trials.jsonl, ranks as the search does, spans runs."""

import csv
import io
import json

import pytest

from nas.objective import rank_key
from nas.runlog import read_events, trial_records

from .conftest import cli, write_experiment


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, tiny_data):
    base = tmp_path_factory.mktemp("second")
    exp = write_experiment(base / "e.toml", tiny_data, experiment={"name": "tiny2"}, search={"seed": 7})
    assert cli("search", exp, "--results", base / "res", "--run-id", "r2").code == 0
    return base / "res" / "tiny2" / "r2"


def test_formats_parse_and_agree_with_the_log(finished_run):
    logged = {t["trial_id"]: t for t in trial_records(read_events(finished_run / "trials.jsonl")).values()}
    rows = json.loads(cli("leaderboard", finished_run, "--format", "json").out)
    assert {r["trial_id"] for r in rows} == set(logged)
    for r in rows:
        assert r["objective"] == logged[r["trial_id"]]["objective"]
        assert r["threshold"] == logged[r["trial_id"]]["threshold"]
        assert any(k.startswith("param_") for k in r)
    expected_order = [t["trial_id"] for t in sorted(logged.values(), key=rank_key)]
    assert [r["trial_id"] for r in rows] == expected_order
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))

    parsed = list(csv.DictReader(io.StringIO(cli("leaderboard", finished_run, "--format", "csv").out)))
    assert [r["trial_id"] for r in parsed] == expected_order
    assert [float(r["objective"]) for r in parsed] == [r["objective"] for r in rows]

    md = cli("leaderboard", finished_run, "--format", "md").out.strip().splitlines()
    assert md[0].startswith("| rank | run | trial_id") and len(md) == 2 + len(rows)

    table = cli("leaderboard", finished_run).out
    assert "objective" in table.splitlines()[0] and "split: val" in table


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
