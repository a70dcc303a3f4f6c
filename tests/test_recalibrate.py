"""`nas recalibrate`: the threshold it picks equals a hand computation of the project's rule, the new export
serves the same probabilities under the new threshold beside the untouched old one, and too few positives
are refused with how many are needed."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import tensorflow as tf
import tifffile

from nas.recalibrate import needed_positives

from .conftest import cli
from .test_formats import scene


def wilson_lower(successes: int, n: int, confidence: float) -> float:
    """Written out here from the textbook formula, independently of nas.objective."""
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def hand_threshold(y: np.ndarray, p: np.ndarray, floor: float, confidence: float) -> float:
    """Every candidate threshold tried by hand: highest precision among those whose recall's lower bound
    reaches the floor; equal precision goes to the higher threshold."""
    best = None
    for t in sorted(set(p.tolist())):
        called = p >= t
        tp = int((called & (y == 1)).sum())
        if wilson_lower(tp, int(y.sum()), confidence) < floor - 1e-12:
            continue
        precision = tp / int(called.sum())
        if best is None or precision >= best[0]:
            best = (precision, t)
    return best[1]


def labelled_session(root: Path, export: Path, n: int, positives: int) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Frames of a 'new session' labelled so that positives tend to score higher, with some overlap."""
    pool = root / "pool"
    pool.mkdir(parents=True)
    files = []
    for i in range(n):
        files.append(pool / f"s{i:03d}.tif")
        tifffile.imwrite(files[-1], scene(48, 1000 + i).astype(np.uint16))
    res = cli("predict", export, pool)
    assert res.code == 0, res.err
    prob = {r["path"]: float(r["probability"]) for r in csv.DictReader(res.out.splitlines())}
    ranked = sorted(files, key=lambda f: prob[str(f)])
    rng = np.random.default_rng(0)
    top = list(ranked[n - positives + 4 :]) + [ranked[i] for i in rng.choice(n - positives + 4, 4, replace=False)]
    for f in files:
        label = "positive" if f in top else "negative"
        (root / "session" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "session" / label / f.name)
    y = np.array([f in top for f in files], dtype=int)
    return y, np.array([prob[str(f)] for f in files]), files


def test_recalibrate_picks_the_hand_computed_threshold_and_writes_a_new_export_beside_the_old(exported_run, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(exported_run, export)
    old_card = json.loads((export / "model_card.json").read_text())
    y, p, files = labelled_session(tmp_path, export, 60, 40)
    res = cli("recalibrate", export, tmp_path / "session", "--out", tmp_path / "export-new")
    assert res.code == 0, res.err
    new = tmp_path / "export-new"
    card = json.loads((new / "model_card.json").read_text())
    expected = hand_threshold(y, p, old_card["recall_floor"], 0.9)  # the export had no confidence: 0.9 by default
    assert card["threshold"] == pytest.approx(expected, abs=1e-7) and card["threshold_from"] == "recalibration"
    assert card["threshold_sessions"] is None  # the old threshold's sessions are not this one's
    r = card["recalibration"]
    assert (r["n"], r["positives"], r["negatives"], r["recall_confidence"]) == (60, 40, 20, 0.9)
    called = p >= expected
    assert r["new"]["precision"] == pytest.approx((called & (y == 1)).sum() / called.sum())
    assert r["new"]["recall_lower_bound"] == pytest.approx(wilson_lower(int((called & (y == 1)).sum()), 40, 0.9))
    assert r["previous"]["threshold"] == old_card["threshold"]
    md = (new / "MODEL_CARD.md").read_text()
    assert "## Recalibration" in md and "| previous (from val) |" in md and "| recalibrated |" in md
    assert json.loads((export / "model_card.json").read_text()) == old_card  # the old export is untouched
    # the same network: identical probabilities; the decision now at the new threshold, inside the SavedModel too
    frames = np.stack([tifffile.imread(f) for f in files[:8]])
    old_out = tf.saved_model.load(str(export / "saved_model")).signatures["serve_uint16"](frames=tf.constant(frames))
    new_out = tf.saved_model.load(str(new / "saved_model")).signatures["serve_uint16"](frames=tf.constant(frames))
    np.testing.assert_array_equal(old_out["probability"].numpy(), new_out["probability"].numpy())
    np.testing.assert_array_equal(new_out["decision"].numpy(), new_out["probability"].numpy() >= np.float32(expected))
    res = cli("predict", new, files[0])
    row = next(csv.DictReader(res.out.splitlines()))
    assert int(row["decision"]) == int(float(row["probability"]) >= expected)


def test_too_few_positives_to_show_the_floor_are_refused_with_how_many_are_needed(exported_run, tmp_path):
    labelled_session(tmp_path, exported_run, 24, 12)
    res = cli("recalibrate", exported_run, tmp_path / "session", "--out", tmp_path / "never")
    assert res.code == 2
    assert "12 positive frames cannot show recall >= 0.9 with 0.9 confidence" in res.err
    assert "at least 15 are needed" in res.err and not (tmp_path / "never").exists()
    z = NormalDist().inv_cdf(0.9)  # a perfect recall's Wilson bound is n / (n + z^2): 0.9 needs n >= 9 z^2
    assert needed_positives(0.9, 0.9) == math.ceil(9 * z * z) == 15
    assert needed_positives(0.95, 0.9) == math.ceil(19 * z * z)


def test_recalibration_refuses_a_labelled_frame_it_cannot_read(exported_run, tmp_path):
    for label in ("positive", "negative"):
        (tmp_path / "s" / label).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "s" / label / "ok.tif", scene(48, 1).astype(np.uint16))
    (tmp_path / "s" / "positive" / "bad.tif").write_bytes(b"II*\x00junk")
    res = cli("recalibrate", exported_run, tmp_path / "s")
    assert res.code == 2 and "bad.tif: not a readable TIFF" in res.err and "recalibration needs every labelled frame" in res.err
