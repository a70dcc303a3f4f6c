"""The house: behaviour kept through the driver's refactor (a fixed-seed search gives the recorded
leaderboard), the KerasTuner adapter's self-check, the typed trial record and the shape rules of nas/."""

import ast
import json
from pathlib import Path

import pytest

from nas import ktadapter
from nas.errors import NasError
from nas.runlog import read_trials
from nas.trial import TrialRecord, TrialStatus, rank_key

from .conftest import REPO, cli, write_experiment

GOLDEN = REPO / "tests" / "golden"


@pytest.mark.parametrize("tuner", ["random", "bayesian"])
def test_fixed_seed_search_gives_the_recorded_leaderboard(tmp_path, tiny_data, tuner):
    """tests/golden/ was written by the search driver before it became the nas/search package (and passed
    unchanged through that refactor): the same experiment must propose the same hyperparameters, train the
    same models and rank them the same way. Re-recorded on purpose twice: when batch norm's momentum began to
    follow the fit's length (nas.models.bn_momentum; only the batch-norm trial's figures moved), and when the
    last training batch of an epoch began to be topped up to a full batch (nas.data.epoch_batches(full=True);
    the same hyperparameters were proposed, the models' figures moved)."""
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"tuner": tuner, "bayesian_initial_points": 2},
                           budget={"max_trials": 3, "epochs": 2})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", tuner).code == 0
    rows = json.loads(cli("leaderboard", tmp_path / "res" / "tiny" / tuner, "--format", "json").out)
    golden = json.loads((GOLDEN / f"leaderboard_{tuner}.json").read_text())
    assert [r["trial_id"] for r in rows] == [g["trial_id"] for g in golden]
    for row, old in zip(rows, golden, strict=True):
        assert {k[6:]: v for k, v in row.items() if k.startswith("param_")} == old["hyperparameters"]
        assert (row["params"], row["epochs_run"], row["best_epoch"]) == (old["params"], old["epochs_run"], old["best_epoch"])
        # objectives on 9 val frames are ratios of small counts: equal, not merely close
        assert row["objective"] == pytest.approx(old["objective"], abs=1e-9)
        assert row["threshold"] == pytest.approx(old["threshold"], abs=1e-3)


def test_kerastuner_adapter_finds_what_it_relies_on():
    ktadapter.check()  # raises a NasError naming every missing internal


def test_kerastuner_adapter_names_a_missing_internal(monkeypatch):
    from keras_tuner.src import utils

    monkeypatch.delattr(utils, "save_json")
    with pytest.raises(NasError, match=r"lacks what stem-nas relies on: keras_tuner\.src\.utils\.save_json .*keras-tuner==1\.4\.8"):
        ktadapter.check()


def test_a_damaged_record_names_its_line_and_field(tmp_path):
    log = tmp_path / "trials.jsonl"
    log.write_text('{"event": "trial_started", "trial_id": "0", "time": 1.0, "hyperparameters": {}}\n'
                   '{"event": "trial_finished", "trial_id": "0", "time": 2.0, "objective": "high"}\n')
    with pytest.raises(NasError, match=r"trials\.jsonl:2: trial_finished event of trial 0: field 'objective': expected float"):
        read_trials(log)


def test_ranking_rule_orders_complete_before_raced_out_before_infeasible_before_failed():
    recs = [TrialRecord(trial_id="raced", status=TrialStatus.FINISHED, objective=0.99, folds_done=1, folds_total=3, raced_out=True),
            TrialRecord(trial_id="full", status=TrialStatus.FINISHED, objective=0.5, folds_done=3, folds_total=3),
            TrialRecord(trial_id="over", status=TrialStatus.FINISHED, objective=1.0, feasible=False),
            TrialRecord(trial_id="broke", status=TrialStatus.FAILED),
            TrialRecord(trial_id="cut", status=TrialStatus.INTERRUPTED)]
    assert [r.trial_id for r in sorted(recs, key=rank_key)] == ["full", "raced", "over", "broke", "cut"]
    assert [r.usable for r in recs] == [True, True, False, False, False]


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_module_over_400_lines_no_function_over_60():
    for path in sorted((REPO / "nas").rglob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path} has {len(text.splitlines())} lines"
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            assert length <= 60, f"{path}:{fn.lineno} {fn.name} has {length} lines"


def test_kerastuner_internals_statuses_and_events_live_in_one_module_each():
    private, spelled = set(), set()
    names = {str(s) for s in TrialStatus} | {"trial_finished", "trial_started", "search_started", "fold_finished"}
    for path in sorted((REPO / "nas").rglob("*.py")):
        text = path.read_text()
        if "keras_tuner.src" in text:
            private.add(path.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.add(Path(path).name)
    assert private == {"ktadapter.py"}
    assert spelled == {"trial.py"}


def test_a_trial_file_written_without_the_oracle_state_is_found_and_run_again():
    """KerasTuner saves a new trial's file before the oracle's state: a kill between the two leaves a RUNNING
    trial no tuner holds, counted against max_trials and never run. Resume (and a chief's restart) re-queue it."""
    from types import SimpleNamespace

    def trial(tid, status):
        return SimpleNamespace(trial_id=tid, status=status)

    trials = {"0": trial("0", "COMPLETED"), "1": trial("1", "RUNNING"), "2": trial("2", "RUNNING"), "3": trial("3", "RUNNING")}
    oracle = SimpleNamespace(trials=trials, ongoing_trials={"tuner0": trials["1"]}, _retry_queue=["3"])
    assert ktadapter.orphaned_trials(oracle) == ["2"]
