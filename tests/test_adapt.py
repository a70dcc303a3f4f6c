"""A search that adapts: the input size, augmentation strengths and training length searched per trial;
test-time augmentation; each Hyperband rung finishing its own cosine schedule; the arithmetic precision
chosen by a probe; workers that hand over when their memory grows."""

import json
from pathlib import Path

import numpy as np
import pytest

from nas.runlog import read_events, read_trials

from .conftest import cli, write_experiment

ADAPTIVE_SPACE = """
input:
  image_size: {choice: [32, 48]}
training:
  epochs: {choice: [1, 2]}
augment:
  noise: {choice: [0.0, 0.05]}
  blur: 0.5
blocks:
  count: 2
  filters: 4
optimizer:
  schedule: cosine
"""


def test_input_size_augmentation_and_epochs_are_searched_per_trial(tmp_path, tiny_data, monkeypatch):
    from nas import data as data_mod

    seen = []
    real = data_mod.epoch_batches
    monkeypatch.setattr(data_mod, "epoch_batches", lambda frames, *a, **k: seen.append((frames.shape[1], k.get("augment")))
                        or real(frames, *a, **k))
    space = tmp_path / "adaptive.yaml"
    space.write_text(ADAPTIVE_SPACE)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"space": str(space)}, budget={"max_trials": 4})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    trials = read_trials(run / "trials.jsonl")
    sizes = {t.hyperparameters["input.image_size"] for t in trials.values()}
    assert sizes == {32, 48}, "this seed draws both sizes"
    for t in trials.values():
        assert t.epochs_run == t.hyperparameters["training.epochs"]
    trained = {(size, aug["noise"], aug["blur"]) for size, aug in seen if aug}
    assert {s for s, _, _ in trained} == {32, 48} and {b for _, _, b in trained} == {0.5}
    best = max((t for t in trials.values() if t.hyperparameters["input.image_size"] == 48), key=lambda t: t.objective)
    assert cli("export", run, "--trial", best.trial_id, "--out", tmp_path / "x").code == 0
    card = json.loads((tmp_path / "x" / "model_card.json").read_text())
    assert card["input"]["image_size"] == 48  # the trial's own size, with its own cache


def test_test_time_augmentation_makes_the_export_invariant_to_flips_and_turns(tmp_path, tiny_data):
    import tensorflow as tf
    import tifffile

    exp = write_experiment(tmp_path / "e.toml", tiny_data, augment={"flips": True, "rot90": True, "tta": True},
                           budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    assert cli("export", run).code == 0
    assert json.loads((run / "export" / "model_card.json").read_text())["tta"] is True
    model = tf.saved_model.load(str(run / "export" / "saved_model"))
    frame = tifffile.imread(sorted((tiny_data / "positive").glob("*.tif"))[0]).astype(np.float32)
    views = np.stack([frame, np.rot90(frame), frame[:, ::-1], np.rot90(frame, 3)[::-1]])
    prob = model.signatures["serving_default"](frames=tf.constant(views))["probability"].numpy()
    np.testing.assert_allclose(prob, prob[0], atol=1e-5)


def test_a_hyperband_rung_schedules_its_cosine_over_its_own_epochs(tmp_path):
    from nas.prepare import FoldPlan
    from nas.search.fold import FoldJob, restore_or_build

    asked = []
    job = FoldJob(trial_id="3", plan=FoldPlan(0, np.arange(100), np.arange(10)), folder=tmp_path, epochs=6,
                  initial_epoch=2, seed=0, image_size=32, batch_size=32, augment={}, select_best_epoch=True)

    class Built:
        def load_weights(self, path):
            raise AssertionError("no earlier rung named")

    started = restore_or_build(job, lambda steps: asked.append(steps) or Built())
    assert asked == [4 * 4] and started.epoch == 2 and started.checkpoint is None and not started.from_init  # 4 steps an epoch, epochs 3..6 of this rung


def test_precision_auto_probes_once_and_falls_back_without_native_units(tmp_path, monkeypatch):
    from nas import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    decision = precision.choose("auto", tmp_path)
    assert decision["policy"] == "float32" and "no native bfloat16" in decision["why"]
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert precision.choose("auto", tmp_path) == decision  # kept in precision.json: a resume does not probe again
    (tmp_path / precision.PROBE_FILE).unlink()
    monkeypatch.setattr(precision, "epoch_seconds", lambda policy, size=64: {"float32": 2.0, "mixed_bfloat16": 1.0}[policy])
    probed = precision.choose("auto", tmp_path)
    assert probed["policy"] == "mixed_bfloat16" and "2.00x" in probed["why"]


def test_a_worker_hands_over_when_its_memory_grows(tmp_path, tiny_data, monkeypatch):
    from nas.search import tuner as tuner_mod
    from nas.workers import RECYCLED_EXIT

    exp = write_experiment(tmp_path / "e.toml", tiny_data, search={"recycle_memory_mb": 50},
                           budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    rss = iter(range(1000, 10_000, 100))  # +100 MB a reading: over the 50 MB limit after one trial
    monkeypatch.setattr(tuner_mod, "current_rss_mb", lambda: float(next(rss)))
    res = cli("resume", run, "--max-trials", "4", "--worker-trials", "10")
    assert res.code == RECYCLED_EXIT, res.err
    recycled = [e for e in read_events(run / "trials.jsonl") if e["event"] == "worker_recycled"]
    assert len(recycled) == 1 and "resident memory grew" in recycled[0]["reason"]
    assert len(read_trials(run / "trials.jsonl")) == 2  # one trial before, one in this worker


@pytest.mark.parametrize("folds, expected", [(1, "objective.folds: expected 0 (one train/val split) or 2 to 20 folds"),
                                             (9, "objective.folds = 9 needs at least 9 groups outside the test split")])
def test_impossible_folds_are_refused_naming_the_key(tmp_path, tiny_data, folds, expected):
    exp = write_experiment(tmp_path / "e.toml", tiny_data, objective={"folds": folds})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")
    assert res.code == 2 and expected in res.err
    assert not list(Path(tmp_path / "res").rglob("trials.jsonl")) or not read_trials(next(Path(tmp_path / "res").rglob("trials.jsonl")))
