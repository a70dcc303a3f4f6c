"""Data ingest: every bad input is one clear error naming the file (or skipped and counted), splits are
stratified, grouped and seeded, the cache decodes each frame once, and both normalizations agree."""

import csv
import os
import shutil

import numpy as np
import pytest
import tifffile

from nas import cache as cache_mod
from nas import data
from nas import frames as frames_mod
from nas import splits as splits_mod
from nas.errors import NasError
from nas.preprocess import normalize_np, normalize_tf

from .conftest import cli, write_experiment

SMALL_SPACE = """
blocks: {type: conv, count: 1, filters: 4, kernel_size: 3, normalization: batch, pooling: max, dropout: 0.0}
head: {pooling: avg, dense: 0, dropout: 0.0}
optimizer: {name: adam, learning_rate: 0.003}
"""


def make_folder_data(root, n=12, size=24, seed=0):
    rng = np.random.default_rng(seed)
    for label in ("positive", "negative"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tifffile.imwrite(root / label / f"{i:03d}.tif", rng.integers(0, 60000, (size, size), dtype=np.uint16))
    return root


BAD_FILES = {
    "rgb.tif": (lambda p: tifffile.imwrite(p, np.zeros((16, 16, 3), np.uint8), photometric="rgb"), "RGB"),
    "corrupt.tif": (lambda p: p.write_bytes(b"II*\x00" + b"\x13" * 40), "not a readable TIFF"),
    "empty.tif": (lambda p: p.write_bytes(b""), "empty file"),
    "stack.tif": (lambda p: tifffile.imwrite(p, np.arange(768, dtype=np.uint16).reshape(3, 16, 16), photometric="minisblack"), "stack of 3 frames"),
    "constant.tif": (lambda p: tifffile.imwrite(p, np.full((16, 16), 7, np.uint16)), "constant image"),
    "nan.tif": (lambda p: tifffile.imwrite(p, np.where(np.eye(16) > 0, np.nan, 1.0).astype(np.float32)), "NaN"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_frame_is_a_clear_error_naming_the_file(tmp_path, name):
    write, expected = BAD_FILES[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(NasError) as info:
        frames_mod.read_frame(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_truncated_tiff_is_refused(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(NasError, match="cut.tif"):
        frames_mod.read_frame(cut)


def test_accepted_dtypes_are_read(tmp_path):
    for dtype in (np.uint8, np.uint16, np.int16, np.float32):
        p = tmp_path / f"{np.dtype(dtype).name}.tif"
        tifffile.imwrite(p, (np.arange(256).reshape(16, 16) % 100).astype(dtype))
        assert frames_mod.read_frame(p).shape == (16, 16)


def test_labels_csv_problems_name_the_line_and_file(tmp_path):
    root = make_folder_data(tmp_path / "d", n=3)
    labels = root / "labels.csv"
    cases = [
        ("positive/000.tif,positive\nmissing.tif,negative\n", "image 'missing.tif' not found"),
        ("../outside.tif,positive\n", "outside the data folder"),
        ("positive/000.tif,maybe\n", "unknown label 'maybe'"),
        ("positive/000.tif,positive\npositive/000.tif,positive\n", "listed twice"),
    ]
    (tmp_path / "outside.tif").write_bytes(b"x")
    for body, expected in cases:
        labels.write_text("path,label\n" + body)
        with pytest.raises(NasError) as info:
            data.scan(root)
        assert expected in str(info.value) and "labels.csv:" in str(info.value)
    labels.write_text("file,label\n")
    with pytest.raises(NasError, match="missing column"):
        data.scan(root)


def test_empty_class_is_refused(tmp_path):
    root = make_folder_data(tmp_path / "d", n=3)
    shutil.rmtree(root / "negative")
    (root / "negative").mkdir()
    with pytest.raises(NasError, match="class 'negative' has no images"):
        data.scan(root)


def test_bad_tiff_stops_search_before_any_trial_or_is_skipped_and_counted(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    bad = root / "negative" / "rgb.tif"
    tifffile.imwrite(bad, np.zeros((48, 48, 3), np.uint8), photometric="rgb")
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["negative/rgb.tif", "negative", "chip00"])
    exp = write_experiment(tmp_path / "e.toml", root, budget={"max_trials": 1, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "a")
    assert res.code == 2 and str(bad) in res.err and "RGB" in res.err
    assert not (tmp_path / "res" / "tiny" / "a" / "tuner").exists()

    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "b", "--set", "data.skip_bad=true")
    assert res.code == 0, res.err
    assert "1 bad frames skipped" in res.out
    log = (tmp_path / "res" / "tiny" / "b" / "trials.jsonl").read_text()
    assert '"event": "data_skipped"' in log and "rgb.tif" in log


def test_split_is_stratified_grouped_seeded_and_persisted(tiny_data, finished_run):
    records = data.scan(tiny_data)
    a = splits_mod.make_split(records, (0.7, 0.15, 0.15), seed=0)
    assert a == splits_mod.make_split(records, (0.7, 0.15, 0.15), seed=0)
    groups_in = {s: {r.group for r, x in zip(records, a, strict=True) if x == s} for s in splits_mod.SPLITS}
    assert not (groups_in["train"] & groups_in["val"] or groups_in["train"] & groups_in["test"] or groups_in["val"] & groups_in["test"])
    for s in splits_mod.SPLITS:
        assert {r.label for r, x in zip(records, a, strict=True) if x == s} == {0, 1}
    ungrouped = [data.Record(r.path, r.label) for r in records]
    b = splits_mod.make_split(ungrouped, (0.5, 0.25, 0.25), seed=4)
    for cls in (0, 1):
        n = sum(r.label == cls for r in ungrouped)
        assert sum(r.label == cls and x == "val" for r, x in zip(ungrouped, b, strict=True)) == round(0.25 * n)
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    assert {r["split"] for r in rows} == set(splits_mod.SPLITS) and len(rows) == len(records)


def test_cache_decodes_once_and_rebuilds_only_what_changed(tmp_path):
    root = make_folder_data(tmp_path / "d", n=5)
    records = data.scan(root)
    first = cache_mod.build_cache(records, root, tmp_path / "cache", 16, (1, 99))
    assert first.rebuilt == 10 and first.frames.shape == (10, 16, 16)
    again = cache_mod.build_cache(records, root, tmp_path / "cache", 16, (1, 99))
    assert again.rebuilt == 0
    np.testing.assert_array_equal(np.asarray(first.frames), np.asarray(again.frames))
    touched = root / records[3].path
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = cache_mod.build_cache(records, root, tmp_path / "cache", 16, (1, 99))
    assert third.rebuilt == 1
    other = cache_mod.build_cache(records, root, tmp_path / "cache", 20, (1, 99))
    assert other.rebuilt == 10 and other.frames.shape[1] == 20


def test_same_content_under_two_labels_is_refused(tmp_path):
    root = make_folder_data(tmp_path / "d", n=3)
    shutil.copy(root / "positive" / "000.tif", root / "negative" / "dup.tif")
    with pytest.raises(NasError, match="same image content"):
        cache_mod.build_cache(data.scan(root), root, tmp_path / "cache", 16, (1, 99))


@pytest.mark.parametrize("shape, size", [((48, 48), 32), ((100, 60), 32), ((700, 700), 64), ((20, 20), 32)])
def test_numpy_and_tensorflow_normalization_agree(shape, size):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 65535, shape).astype(np.uint16)
    a = normalize_np(frame, size, (0.5, 99.5))
    b = normalize_tf(frame[None].astype(np.float32), size, (0.5, 99.5)).numpy()[0, ..., 0]
    assert a.shape == (size, size) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_parallel_decode_equals_serial_and_reports_progress(tmp_path):
    root = make_folder_data(tmp_path / "d", n=40, size=20)  # 80 frames: above the parallel threshold
    records = data.scan(root)
    seen = []
    par = cache_mod.build_cache(records, root, tmp_path / "c1", 16, (1, 99), workers=2, progress=lambda d, t: seen.append((d, t)))
    ser = cache_mod.build_cache(records, root, tmp_path / "c2", 16, (1, 99), workers=1)
    np.testing.assert_array_equal(np.asarray(par.frames), np.asarray(ser.frames))
    assert seen[-1] == (80, 80)


def test_microscope_formats_are_read_through_rosettasciio(tmp_path):
    emd = pytest.importorskip("rsciio.emd")
    frame = (np.arange(32 * 32).reshape(32, 32) % 97).astype(np.uint16)
    axes = [{"size": 32, "name": n, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": False} for n in "yx"]
    emd.file_writer(str(tmp_path / "f.emd"), {"data": frame, "axes": axes, "metadata": {"General": {"title": "f"}, "Signal": {}}, "original_metadata": {}})
    np.testing.assert_array_equal(frames_mod.read_frame(tmp_path / "f.emd"), frame.astype(np.float64))
    (tmp_path / "bad.dm3").write_bytes(b"\x00" * 64)
    with pytest.raises(NasError, match="bad.dm3: not a readable .dm3 file"):
        frames_mod.read_frame(tmp_path / "bad.dm3")


def test_augmentation_keeps_content_and_applies_to_training_only(tmp_path, tiny_data, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((6, 16, 16)).astype(np.float32)
    y = data.augment_batch(x, rng, {"flips": True, "rot90": True})
    for a, b in zip(x, y, strict=True):  # flips and turns permute pixels, nothing else
        np.testing.assert_array_equal(np.sort(a.ravel()), np.sort(b.ravel()))
    z = data.augment_batch(x, rng, {"shift": 0.1, "intensity": 0.2, "noise": 0.05})
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1 and not np.allclose(z, x)

    calls = []
    real = data.epoch_batches
    monkeypatch.setattr(data, "epoch_batches", lambda *a, **k: calls.append((k.get("shuffle"), k.get("augment"))) or real(*a, **k))
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 1, "epochs": 1}, augment={"flips": True, "rot90": True})
    assert cli("search", exp, "--results", tmp_path / "res").code == 0
    assert any(shuffle and aug["flips"] and aug["rot90"] and not aug["noise"] for shuffle, aug in calls)
    assert all(aug is None for shuffle, aug in calls if not shuffle)  # validation is never augmented


def test_resume_refuses_changed_data_naming_the_files(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    exp = write_experiment(tmp_path / "e.toml", root, budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    victim = sorted((root / "positive").glob("*.tif"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res = cli("resume", tmp_path / "res" / "tiny" / "r", "--max-trials", "2")
    assert res.code == 2 and "data changed" in res.err and f"{victim.relative_to(root)} (modified)" in res.err
    res = cli("export", tmp_path / "res" / "tiny" / "r")
    assert res.code == 2 and "data changed" in res.err


def test_same_frame_in_two_splits_is_refused_or_dropped(tmp_path, tiny_data):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    rows = list(csv.DictReader(open(root / "labels.csv")))
    src = next(r for r in rows if r["label"] == "positive")
    groups = sorted({r["group"] for r in rows})
    copy = dict(src, path="positive/copy.tif", group=next(g for g in groups if g != src["group"]))
    shutil.copy(root / src["path"], root / copy["path"])
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow(copy)
    exp = write_experiment(tmp_path / "e.toml", root, budget={"max_trials": 1, "epochs": 1})
    for seed in range(10):  # find a split seed that puts the two copies' groups in different splits
        res = cli("search", exp, "--results", tmp_path / "res", "--run-id", f"s{seed}", "--set", f"data.seed={seed}")
        if res.code == 2:
            break
    assert "same image content" in res.err and "different splits" in res.err
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "skip", "--set", f"data.seed={seed}", "--set", "data.skip_bad=true")
    assert res.code == 0, res.err
    log = (tmp_path / "res" / "tiny" / "skip" / "trials.jsonl").read_text()
    assert "duplicate of" in log
    split_paths = {r["path"] for r in csv.DictReader(open(tmp_path / "res" / "tiny" / "skip" / "split.csv"))}
    assert len({src["path"], copy["path"]} & split_paths) == 1


def test_search_reports_class_balance_per_split(finished_run):
    from nas.runlog import read_events

    started = read_events(finished_run / "trials.jsonl")[0]
    assert set(started["balance"]) == set(splits_mod.SPLITS)
    assert sum(b["n"] for b in started["balance"].values()) == 60


def test_loss_weights_balance_the_classes_overall_or_within_each_session():
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "", "x"])
    rows = np.arange(12)  # the last frame is not a training row
    assert data.loss_weights("none", labels, groups, rows) is None
    auto = data.loss_weights("auto", labels, groups, rows)
    np.testing.assert_allclose(auto[rows], np.where(labels[rows] == 1, 12 / 8, 12 / 16))  # n / (2 n_c)
    per = data.loss_weights("session", labels, groups, rows)
    assert per[12] == 0 and auto[12] == 0 and per[rows].mean() == pytest.approx(1)
    for g, total in (("a", 4), ("b", 4), ("c", 3)):
        mine = groups[rows] == g
        assert per[rows][mine].sum() == pytest.approx(total)  # each session keeps its frames' share ...
        if len(set(labels[rows][mine])) == 2:  # ... split evenly between the classes it holds
            assert per[rows][mine & (labels[rows] == 1)].sum() == pytest.approx(total / 2)
    np.testing.assert_allclose(per[[0, 1, 4, 7]], [2.0, 2 / 3, 2 / 3, 2.0])
    np.testing.assert_allclose(per[8:12], 1.0)  # one class only (and the ungrouped frame): unweighted
    ungrouped = data.loss_weights("session", labels, np.full(len(labels), ""), rows)
    np.testing.assert_allclose(ungrouped, auto)  # without sessions, session weights are auto's


def test_loss_weights_as_sample_weights_train_as_class_weights_did():
    """'auto' reaches Keras as per-frame weights since `session` exists; before, as class_weight. Keras turns
    class_weight into exactly these sample weights, so runs (and this README's figures) are unchanged."""
    import keras

    from nas.models import build_model, fresh_session
    from nas.space import parse_space

    rng = np.random.default_rng(0)
    frames = rng.random((24, 16, 16), np.float32)
    labels = (np.arange(24) % 3 == 0).astype(int)
    rows = np.arange(24)
    weights = data.loss_weights("auto", labels, np.full(24, ""), rows)
    n, pos = len(labels), labels.sum()
    values = {k: d.constant for k, d in parse_space(SMALL_SPACE).dimensions.items()}
    out = []
    for how in ("class_weight", "sample_weight"):
        fresh_session()
        keras.utils.set_random_seed(3)
        model = build_model(values, 16, 0.9, 6)
        for x, y, w in data.epoch_batches(frames, labels, rows, 8, epoch=0, shuffle=True, seed=1, full=True, weights=weights):
            if how == "class_weight":
                model.train_on_batch(x, y, class_weight={0: n / (2 * (n - pos)), 1: n / (2 * pos)})
            else:
                model.train_on_batch(x, y, sample_weight=w)
        out.append([np.asarray(v) for v in model.get_weights()])
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_search_trains_with_session_balanced_weights(tmp_path, tiny_data, monkeypatch):
    import keras

    made, seen = [], []
    real_weights, real_train = data.loss_weights, keras.Model.train_on_batch
    monkeypatch.setattr(data, "loss_weights", lambda mode, labels, groups, rows: made.append(
        (mode, labels, groups, rows, real_weights(mode, labels, groups, rows))) or made[-1][-1])
    monkeypatch.setattr(keras.Model, "train_on_batch", lambda self, x, y, *a, **k: seen.append(
        (np.asarray(y).ravel(), k.get("sample_weight"))) or real_train(self, x, y, *a, **k))
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 1, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "res", "--run-id", "r", "--set", "training.class_weight=session")
    assert res.code == 0, res.err
    mode, labels, groups, rows, weights = made[0]
    assert mode == "session" and len(set(groups[rows])) >= 2
    for g in set(groups[rows]):
        mine = rows[groups[rows] == g]
        if len(set(labels[mine])) == 2:  # within each session the classes weigh the same
            assert weights[mine[labels[mine] == 1]].sum() == pytest.approx(weights[mine[labels[mine] == 0]].sum())
    assert seen and all(w is not None and len(w) == len(y) and (w > 0).all() for y, w in seen)  # and reach the loss
    bad = cli("search", exp, "--results", tmp_path / "res", "--set", "training.class_weight=chip")
    assert bad.code == 2 and "training.class_weight" in bad.err and "session" in bad.err
