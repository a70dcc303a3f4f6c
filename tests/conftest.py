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


def write_easy_data(root: Path, n: int = 96, groups: int = 6, seed: int = 0) -> Path:
    """Frames a tiny CNN learns in two epochs: positives hold a bright disc, negatives none; each group
    (session) has its own detector offset. For tests of what happens around learning, not of learning."""
    import csv

    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        group = (i // 2) % groups
        frame = rng.normal(1000 + 300 * group, 40, (32, 32))
        if label == "positive":
            cy, cx = rng.integers(8, 24, 2)
            frame += 900 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 25)
        (root / label).mkdir(parents=True, exist_ok=True)
        path = f"{label}/f{i:03d}.tif"
        tifffile.imwrite(root / path, np.clip(frame, 0, 65535).astype(np.uint16))
        rows.append({"path": path, "label": label, "group": f"s{group}"})
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory) -> Path:
    return write_easy_data(tmp_path_factory.mktemp("easy_data"))


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
