"""Which hyperparameters mattered: on synthetic trial records where one parameter alone decides the
objective, the importance estimate ranks it first; with too few trials it says so instead of guessing."""

import numpy as np
import pytest

from nas.report.importance import MIN_TRIALS, encode, importance


def _trials(n: int, decisive: str, seed: int = 1) -> list[dict]:
    """Leaderboard-like rows: four searched parameters of mixed types; only `decisive` moves the objective."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = {
            "param_optimizer.learning_rate": float(10 ** rng.uniform(-4, -2)),
            "param_blocks.filters": int(rng.choice([8, 16, 24])),
            "param_blocks.dropout": float(rng.choice([0.0, 0.1, 0.2])),
            "param_blocks.normalization": str(rng.choice(["batch", "none"])),
            "param_stem.kernel_size": 5,  # a constant: not a searched dimension, never ranked
        }
        effect = {"param_optimizer.learning_rate": lambda v: np.exp(-((np.log10(v) + 3) ** 2) / 0.3),  # a sweet spot
                  "param_blocks.normalization": lambda v: float(v == "batch"),
                  "param_blocks.filters": lambda v: v / 24}[decisive](row[decisive])
        row["objective"] = 0.5 + 0.4 * effect + rng.normal(0, 0.02)
        rows.append(row)
    return rows


@pytest.mark.parametrize("decisive", ["param_optimizer.learning_rate", "param_blocks.normalization", "param_blocks.filters"])
def test_a_planted_decisive_hyperparameter_ranks_first(decisive):
    imp = importance(_trials(30, decisive))
    names = [name for name, *_ in imp.ranking]
    assert names[0] == decisive
    assert "param_stem.kernel_size" not in names and len(names) == 4
    top, second = imp.ranking[0][1], imp.ranking[1][1]
    assert top > 0.3 and top > 5 * max(second, 0.01)
    assert imp.cv_r2 > 0.5 and imp.note == ""


def test_too_few_trials_to_tell():
    imp = importance(_trials(MIN_TRIALS - 1, "param_blocks.filters"))
    assert imp.ranking == [] and imp.note.startswith(f"too few trials to tell: {MIN_TRIALS - 1} finished")


def test_noise_alone_is_flagged_as_weak_evidence():
    rows = _trials(30, "param_blocks.filters")
    rng = np.random.default_rng(5)
    for row in rows:
        row["objective"] = float(rng.uniform(0.4, 0.9))
    imp = importance(rows)
    assert imp.cv_r2 < 0.1 and "weak evidence" in imp.note


def test_encoding_of_mixed_and_missing_values():
    rows = [{"param_a": 1, "param_b": "x", "param_c": None}, {"param_a": 3, "param_b": "y", "param_c": 2.0},
            {"param_a": 3, "param_b": None, "param_c": 4.0}]
    names, x = encode(rows)
    assert names == ["param_a", "param_b", "param_c"]
    assert x[:, 0].tolist() == [1, 3, 3]
    assert x[0, 1] != x[1, 1] and x[2, 1] < min(x[0, 1], x[1, 1])  # missing sits below every present value
    assert x[0, 2] < 2.0


def test_nas_report_ranks_the_planted_hyperparameter_first(tmp_path):
    """A run folder whose trial log holds 30 synthetic trials: `nas report` puts the deciding one on top."""
    import json

    from .conftest import cli

    run = tmp_path / "results" / "synthetic" / "r1"
    run.mkdir(parents=True)
    (run / "experiment.toml").write_text('[experiment]\nname = "synthetic"\n\n[data]\npath = "data"\npositive = "positive"\n\n'
                                         '[search]\nspace = "space.yaml"\n\n[objective]\nrecall_floor = 0.9\n')
    (run / "split.csv").write_text("path,label,split,group\na.tif,positive,val,g\nb.tif,negative,val,g\n")
    events = [{"event": "search_started", "time": 1000.0}]
    for i, row in enumerate(_trials(30, "param_blocks.normalization")):
        hp = {k.removeprefix("param_"): v for k, v in row.items() if k.startswith("param_")}
        events.append({"event": "trial_finished", "time": 1010.0 + i, "trial_id": f"{i:02d}", "objective": row["objective"],
                       "objective_ci95": [row["objective"] - 0.1, row["objective"] + 0.1], "threshold": 0.5,
                       "tie_break": 0.5, "pr_auc": 0.5, "hyperparameters": hp, "params": 1000 + i, "latency_ms": 1.0,
                       "seconds": 1.0, "feasible": True})
    (run / "trials.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    res = cli("report", run)
    assert res.code == 0, res.err
    md = (run / "report" / "report.md").read_text()
    table = md.split("| hyperparameter | importance | ± (spread) |\n|---|---|---|\n", 1)[1].splitlines()
    assert table[0].startswith("| `blocks.normalization` |")
    assert "Out-of-fold R²" in md and "No export yet" in md
