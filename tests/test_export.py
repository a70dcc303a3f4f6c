"""`nas export` and `nas predict`: calibrate on val, test once, one SavedModel serving raw frames that a
clean process (no nas, no autokeras) loads with the same results as `nas predict`."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nas import export as export_mod
from nas.export import write as export_write
from nas.objective import precision_at_recall
from nas.runlog import read_trials
from nas.trial import rank_key

from .conftest import cli

CLEAN_SERVE = r"""
import json, sys
import numpy as np, tensorflow as tf, tifffile
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
out = {}
for path in sys.argv[2:]:
    frame = tifffile.imread(path).astype(np.float32)
    out[path] = float(serve(frames=tf.constant(frame[None]))["probability"].numpy()[0])
assert "nas" not in sys.modules and "autokeras" not in sys.modules
print(json.dumps(out))
"""


def test_export_writes_the_artifacts_and_card(exported_run):
    for name in ("saved_model", "model.keras", "model_card.json", "MODEL_CARD.md", "trials.jsonl", "split.csv",
                 "pr_curve.png", "confusion_matrix.png", "score_histograms.png"):
        assert (exported_run / name).exists(), name
    card = json.loads((exported_run / "model_card.json").read_text())
    assert card["recall_floor"] == 0.9 and card["threshold_from"] == "val"
    for key in ("precision", "recall", "weighted_f1", "pr_auc", "confusion_matrix", "precision_95ci"):
        assert key in card["metrics"]["test"], key
    assert (exported_run / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (exported_run.parent / "trials.jsonl").read_bytes() == (exported_run / "trials.jsonl").read_bytes()
    # the processor the search ran on, from its start in the log: times and trial counts depend on it
    from nas.precision import machine

    here = machine()
    assert here["cpu"] and here["cores"] >= 1
    assert card["searched_on"] == [here]
    assert f"Searched on: {here['cpu']}, {here['cores']} cores." in (exported_run / "MODEL_CARD.md").read_text()


def test_export_takes_the_best_trial_with_its_best_epoch_and_calibrates_on_val(exported_run, finished_run):
    card = json.loads((exported_run / "model_card.json").read_text())
    trials = read_trials(finished_run / "trials.jsonl")
    best = min(trials.values(), key=rank_key)
    assert card["trial_id"] == best.trial_id
    # the exported weights reproduce the trial's scored validation probabilities -> same threshold
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    y = np.array([r["label"] == "positive" for r in rows if r["split"] == "val"], dtype=int)
    prob = np.load(finished_run / "trials" / best.trial_id / "val_probs.npy")
    assert card["threshold"] == pytest.approx(precision_at_recall(y, prob, 0.9).threshold, abs=1e-6)
    assert card["metrics"]["val"]["precision_at_floor"] == pytest.approx(best.objective, abs=1e-9)


def test_clean_process_saved_model_equals_nas_predict_on_other_size_frames(exported_run, tiny_data, tmp_path):
    frames = sorted((tiny_data / "positive").glob("*.tif"))[:3] + sorted((tiny_data / "negative").glob("*.tif"))[:3]
    out_csv = tmp_path / "preds.csv"
    res = cli("predict", exported_run, *frames, "--out", out_csv)
    assert res.code == 0, res.err
    rows = {r["path"]: r for r in csv.DictReader(open(out_csv))}
    clean = subprocess.run([sys.executable, "-c", CLEAN_SERVE, str(exported_run / "saved_model"), *map(str, frames)],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    served = json.loads(clean.stdout.strip().splitlines()[-1])
    threshold = json.loads((exported_run / "model_card.json").read_text())["threshold"]
    assert len(served) == 6
    for path, prob in served.items():
        assert float(rows[path]["probability"]) == pytest.approx(prob, abs=1e-5)
        assert int(rows[path]["decision"]) == int(prob >= threshold)


def test_uint16_signature_and_keras_file_agree(exported_run, tiny_data):
    import tifffile

    frame = tifffile.imread(sorted((tiny_data / "positive").glob("*.tif"))[0])
    loaded = tf.saved_model.load(str(exported_run / "saved_model"))
    a = loaded.signatures["serving_default"](frames=tf.constant(frame[None].astype(np.float32)))
    b = loaded.signatures["serve_uint16"](frames=tf.constant(frame[None]))
    np.testing.assert_allclose(a["probability"].numpy(), b["probability"].numpy(), atol=1e-6)
    import keras

    model = keras.saving.load_model(exported_run / "model.keras", safe_mode=True)
    assert model.output_shape == (None, 1)


def test_predict_reports_a_bad_file_on_its_row_and_goes_on(exported_run, tiny_data, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    good = sorted((tiny_data / "positive").glob("*.tif"))[:2]
    res = cli("predict", exported_run, good[0], bad, good[1], "--threshold", "0.0")
    assert res.code == 0, res.err
    rows = list(csv.DictReader(res.out.splitlines()))
    assert [r["path"] for r in rows] == [str(good[0]), str(bad), str(good[1])]
    assert "not a readable TIFF" in rows[1]["error"] and rows[1]["probability"] == ""
    assert rows[0]["decision"] == rows[2]["decision"] == "1"  # threshold 0 calls everything positive


def test_failed_export_leaves_nothing_behind(finished_run, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(export_write, "_plots", boom)
    with pytest.raises(RuntimeError):
        export_mod.export_run(finished_run, out=tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []


def test_export_of_unknown_or_unfinished_trial_is_refused(finished_run):
    res = cli("export", finished_run, "--trial", "99")
    assert res.code == 2 and "no trial '99'" in res.err


def test_test_split_is_read_once_and_only_by_export(tmp_path, tiny_data, monkeypatch):
    """Instrument every way frames reach a model (epoch batches, which tf.data datasets wrap too, and
    direct prediction); map their rows to splits."""
    from nas import data as data_mod
    from nas import training

    from .conftest import write_experiment

    calls = []
    real_batches, real_predict = data_mod.epoch_batches, training.predict_rows

    def batches(frames, labels, rows, *args, **kwargs):
        calls.append((phase, sorted(int(r) for r in rows)))
        return real_batches(frames, labels, rows, *args, **kwargs)

    def predict(model, frames, rows, *args, **kwargs):
        calls.append((phase, sorted(int(r) for r in rows)))
        return real_predict(model, frames, rows, *args, **kwargs)

    monkeypatch.setattr(data_mod, "epoch_batches", batches)
    monkeypatch.setattr(training, "predict_rows", predict)
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 2, "epochs": 1})
    phase = "search"
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    splits = [r["split"] for r in csv.DictReader(open(run / "split.csv"))]
    test_rows = {i for i, s in enumerate(splits) if s == "test"}
    phase = "export"
    assert cli("export", run).code == 0
    assert calls and all(not (set(rows) & test_rows) for p, rows in calls if p == "search")
    reading_test = [rows for p, rows in calls if set(rows) & test_rows]
    assert len(reading_test) == 1 and set(reading_test[0]) == test_rows
    assert [p for p, rows in calls if set(rows) & test_rows] == ["export"]


def test_refit_retrains_on_train_and_val_for_the_best_epoch_count(finished_run, tmp_path):
    res = cli("export", finished_run, "--refit", "--out", tmp_path / "refit")
    assert res.code == 0, res.err
    card = json.loads((tmp_path / "refit" / "model_card.json").read_text())
    best = min(read_trials(finished_run / "trials.jsonl").values(), key=rank_key)
    assert card["refit"]["on"] == "train+val" and card["refit"]["epochs"] == best.best_epoch
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    assert card["refit"]["frames"] == sum(r["split"] in ("train", "val") for r in rows)
    plain = json.loads((finished_run / "export" / "model_card.json").read_text()) if (finished_run / "export").exists() else None
    if plain:
        assert card["threshold"] == pytest.approx(plain["threshold"])  # threshold from the searched model on val


def test_ensemble_export_averages_the_top_trials_and_calibrates_the_mean_on_val(finished_run, tmp_path):
    res = cli("export", finished_run, "--ensemble", "2", "--out", tmp_path / "ens")
    assert res.code == 0, res.err
    card = json.loads((tmp_path / "ens" / "model_card.json").read_text())
    ranked = sorted((t for t in read_trials(finished_run / "trials.jsonl").values()
                     if t.status == "finished"), key=rank_key)
    assert card["ensemble"] == [t.trial_id for t in ranked[:2]]
    assert card["latency_ms_batch1"] > 0 and "mean of trials" in res.out
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    y = np.array([r["label"] == "positive" for r in rows if r["split"] == "val"], dtype=int)
    mean = np.mean([np.load(finished_run / "trials" / t.trial_id / "val_probs.npy") for t in ranked[:2]], axis=0)
    assert card["threshold"] == pytest.approx(precision_at_recall(y, mean, 0.9).threshold, abs=1e-5)
    assert card["metrics"]["val"]["precision_at_floor"] == pytest.approx(precision_at_recall(y, mean, 0.9).precision)


@pytest.mark.parametrize("args, expected", [
    (["--ensemble", "3"], "--ensemble 3 needs 3 finished feasible trials that trained every fold; the run has 2"),
    (["--ensemble", "2", "--trial", "0"], "cannot be combined with --trial or --refit"),
    (["--ensemble", "0"], "expected 1 or more trials"),
])
def test_impossible_ensembles_are_refused(finished_run, tmp_path, args, expected):
    res = cli("export", finished_run, *args, "--out", tmp_path / "ens")
    assert res.code == 2 and expected in res.err
    assert not (tmp_path / "ens").exists()
