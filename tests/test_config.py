"""Experiment files: defaults, overrides, and one clear error per mistake, through `nas search` too."""

from pathlib import Path

import pytest

from nas.config import load_experiment, parse_override
from nas.errors import NasError

from .conftest import REPO, cli, write_experiment


def test_shipped_experiments_load_with_defaults():
    for path in (REPO / "experiments").glob("*.toml"):
        exp = load_experiment(path)
        assert exp.objective.recall_floor == 0.9
        assert Path(exp.search.space).is_file(), path
        assert exp.budget.max_trials >= 1


def test_set_overrides_parse_values_as_toml(tmp_path):
    exp_file = write_experiment(tmp_path / "e.toml", tmp_path)
    exp = load_experiment(exp_file, ["objective.recall_floor=0.95", "search.tuner=bayesian", "data.split=[0.6, 0.2, 0.2]"])
    assert exp.objective.recall_floor == 0.95
    assert exp.search.tuner == "bayesian"
    assert exp.data.split == (0.6, 0.2, 0.2)
    assert parse_override("budget.max_trials=10") == ("budget", "max_trials", 10)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("budget.max_trails=3", "unknown key budget.max_trails"),
        ("bugdet.max_trials=3", "unknown section [bugdet]"),
        ("budget.max_trials=\"many\"", "budget.max_trials must be a integer"),
        ("objective.recall_floor=1.5", "objective.recall_floor: expected a value in (0.0, 1.0]"),
        ("data.split=[0.5, 0.5, 0.5]", "fractions must sum to 1"),
        ("data.clip_percentiles=[99, 1]", "expected 0 <= low < high <= 100"),
        ("search.tuner=grid", "expected one of random, bayesian, hyperband, autokeras"),
        ("budget.epochs=true", "budget.epochs must be a integer"),
    ],
)
def test_each_mistake_is_one_error_naming_file_and_key(tmp_path, override, expected):
    exp_file = write_experiment(tmp_path / "e.toml", tmp_path)
    with pytest.raises(NasError) as info:
        load_experiment(exp_file, [override])
    assert expected in str(info.value)
    assert str(exp_file) in str(info.value)


def test_missing_required_key(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text('[experiment]\nname = "x"\n[data]\npath = "d"\n')
    with pytest.raises(NasError, match="missing required key search.space"):
        load_experiment(f)


def test_cli_reports_unknown_key_and_exits_2(tmp_path):
    exp_file = write_experiment(tmp_path / "e.toml", tmp_path, budget={"max_trials": 1})
    text = exp_file.read_text().replace("max_trials = 1", "max_trials = 1\nmax_trails = 2")
    exp_file.write_text(text)
    res = cli("search", exp_file, "--results", tmp_path / "res")
    assert res.code == 2
    assert "unknown key budget.max_trails" in res.err and str(exp_file) in res.err
    assert not (tmp_path / "res").exists()  # nothing was started
