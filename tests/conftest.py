"""Shared fixtures: tiny simulated data, a tiny experiment, and one finished run reused by many tests."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def cli(*args: str) -> CliResult:
    """Run `nas ARGS...` in this process (TensorFlow is imported once per test session)."""
    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def write_experiment(path: Path, data: Path, **sections) -> Path:
    """A tiny experiment: 32 px inputs, 2 epochs, 2 random trials; override any key via sections."""
    values = {
        "experiment": {"name": "tiny"},
        "data": {"path": str(data), "image_size": 32, "seed": 0},
        "search": {"space": str(REPO / "search_spaces" / "small_cnn.yaml"), "tuner": "random", "seed": 1, "batch_size": 16},
        "objective": {"recall_floor": 0.9},
        "budget": {"max_trials": 2, "epochs": 2},
        "export": {"bootstrap": 200},
    }
    for section, table in sections.items():
        values.setdefault(section, {}).update(table)
    import tomli_w

    path.write_text(tomli_w.dumps(values))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from nas.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, n=60, size=48, seed=3, groups=5)
    return root


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_data) -> Path:
    """One finished 2-trial search, shared read-only by leaderboard/export tests."""
    base = tmp_path_factory.mktemp("finished")
    exp = write_experiment(base / "tiny.toml", tiny_data)
    res = cli("search", exp, "--results", base / "results", "--run-id", "r1")
    assert res.code == 0, res.err
    return base / "results" / "tiny" / "r1"


@pytest.fixture(scope="session")
def exported_run(finished_run) -> Path:
    res = cli("export", finished_run)
    assert res.code == 0, res.err
    return finished_run / "export"
