"""The report that `nas export` writes and `nas report` redraws: the test split's mistakes as a gallery whose
counts match the confusion matrix, borderline frames, saliency maps, and a clean terminal that ends with what
was found and where it is."""

import csv
import json
import re
import shutil
import subprocess
import sys

import numpy as np

from nas.report.gallery import GALLERY_MAX, read_predictions, select

from .conftest import REPO, cli

PNG = b"\x89PNG\r\n\x1a\n"


def _card(export):
    return json.loads((export / "model_card.json").read_text())


def _tiles(html: str, kind: str) -> int:
    section = re.search(rf'<section class="gallery" data-kind="{kind}">(.*?)</section>', html, re.S)
    assert section, f"no {kind} gallery"
    return section.group(1).count('<figure class="tile">')


def test_export_saves_test_predictions_that_reproduce_the_card(exported_run, finished_run):
    card = _card(exported_run)
    preds = read_predictions(exported_run)
    rows = list(csv.DictReader(open(finished_run / "split.csv")))
    assert preds.paths == [r["path"] for r in rows if r["split"] == "test"]
    assert preds.labels.tolist() == [int(r["label"] == "positive") for r in rows if r["split"] == "test"]
    called = preds.called(card["threshold"])
    cm = card["metrics"]["test"]["confusion_matrix"]
    assert int(np.sum(called & (preds.labels == 0))) == cm["fp"] and int(np.sum(~called & (preds.labels == 1))) == cm["fn"]
    assert int(np.sum(called & (preds.labels == 1))) == cm["tp"]
    decisions = [int(r["decision"]) for r in csv.DictReader(open(exported_run / "test_predictions.csv"))]
    assert decisions == called.astype(int).tolist()


def test_gallery_counts_equal_the_confusion_matrix_in_markdown_and_html(exported_run):
    card = _card(exported_run)
    cm = card["metrics"]["test"]["confusion_matrix"]
    report = exported_run / "report"
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    n_called = cm["tp"] + cm["fp"]
    expected = {"fp": min(cm["fp"], GALLERY_MAX), "fn": min(cm["fn"], GALLERY_MAX),
                "above": min(n_called, 6), "below": min(card["metrics"]["test"]["n"] - n_called, 6)}
    for kind, n in expected.items():
        assert _tiles(html, kind) == n, kind
        names = sorted(p.name for p in (report / "gallery").glob(f"{kind}-*.png"))
        assert names == [f"{kind}-{i:02d}.png" for i in range(1, n + 1)]
        assert md.count(f"](gallery/{kind}-") == n
    for png in (report / "gallery").iterdir():
        assert png.read_bytes()[:8] == PNG, png
    assert "(test split)" in md and "(val split)" in md
    assert "HiResCAM" in md  # the exported CNN has convolutions: class-activation maps, not occlusion
    # self-contained: no image, script, style sheet or font from anywhere but the page itself
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    assert html.count('src="data:image/png;base64,') == html.count("<img")


def test_tile_captions_name_the_frame_its_truth_and_probability(exported_run):
    card = _card(exported_run)
    preds = read_predictions(exported_run)
    picks = select(preds.labels, preds.probs, card["threshold"])
    md = (exported_run / "report" / "report.md").read_text()
    for kind in ("fp", "fn", "above", "below"):
        for rank, i in enumerate(picks[kind], start=1):
            truth = "positive" if preds.labels[i] else "negative"
            assert f"![p={preds.probs[i]:.3f}, {truth}, {preds.paths[i]}](gallery/{kind}-{rank:02d}.png)" in md


def test_gallery_selection_caps_and_orders():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probs = rng.uniform(0, 1, 400)
    picks = select(labels, probs, 0.5, cap=12, borderline=6)
    fp = np.flatnonzero((probs >= 0.5) & (labels == 0))
    fn = np.flatnonzero((probs < 0.5) & (labels == 1))
    assert len(fp) > 12 and len(picks["fp"]) == 12 and len(picks["fn"]) == 12
    assert set(picks["fp"]) <= set(fp) and set(picks["fn"]) <= set(fn)
    assert probs[picks["fp"]].tolist() == sorted(probs[fp], reverse=True)[:12]  # most confident mistakes first
    assert probs[picks["fn"]].tolist() == sorted(probs[fn])[:12]
    assert probs[picks["above"]].min() >= 0.5 > probs[picks["below"]].max()
    assert probs[picks["above"]].max() <= np.sort(probs[probs >= 0.5])[5]
    few = select(np.array([0, 1, 1]), np.array([0.9, 0.2, 0.8]), 0.5)
    assert few["fp"].tolist() == [0] and few["fn"].tolist() == [1] and few["above"].tolist() == [2, 0]


def test_nas_report_redraws_from_saved_files_without_touching_a_model(exported_run, finished_run, tmp_path, monkeypatch):
    """`nas report` must not score the test split again: no batches, no model call, not even TensorFlow."""
    import keras

    from nas import data as data_mod

    def refuse(*args, **kwargs):
        raise AssertionError("nas report ran a model or read training batches")

    monkeypatch.setattr(data_mod, "epoch_batches", refuse)
    monkeypatch.setattr(keras.Model, "__call__", refuse)
    monkeypatch.setattr(keras.Model, "predict", refuse)
    res = cli("report", finished_run, "--out", tmp_path / "rep")
    assert res.code == 0, res.err
    assert str(tmp_path / "rep" / "report.html") in res.out
    for tile in (exported_run / "report" / "gallery").iterdir():
        assert (tmp_path / "rep" / "gallery" / tile.name).read_bytes() == tile.read_bytes(), tile.name
    assert (tmp_path / "rep" / "report.html").read_text() == (exported_run / "report" / "report.html").read_text()


def test_report_of_a_run_without_export_says_how_to_get_one(finished_run, tmp_path):
    run = tmp_path / "res" / "tiny" / "r1"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("export", "report"))
    res = cli("report", run)
    assert res.code == 0, res.err
    md = (run / "report" / "report.md").read_text()
    assert "No export yet" in md and f"nas export {run}" in md and 'data-kind="fp"' not in (run / "report" / "report.html").read_text()
    assert "Too few trials to tell: 2 finished" in md  # two trials cannot rank hyperparameters


def test_report_refuses_a_bad_or_tampered_export(finished_run, exported_run, tmp_path):
    res = cli("report", finished_run, "--export", tmp_path, "--out", tmp_path / "rep")
    assert res.code == 2 and "not an export folder" in res.err
    fake = tmp_path / "export"
    shutil.copytree(exported_run, fake)
    rows = list(csv.DictReader(open(fake / "test_predictions.csv")))
    threshold = _card(fake)["threshold"]
    flip = next(r for r in rows if float(r["probability"]) < threshold)
    flip["probability"] = repr(min(1.0, threshold + 0.01))
    with open(fake / "test_predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    res = cli("report", finished_run, "--export", fake, "--out", tmp_path / "rep")
    assert res.code == 2 and "test_predictions.csv" in res.err and "nas export" in res.err
    assert not (tmp_path / "rep").exists()


def test_ensemble_export_explains_its_decisions_by_occlusion(finished_run, tmp_path):
    """An ensemble's convolutions sit inside its member models: its report uses occlusion instead."""
    res = cli("export", finished_run, "--ensemble", "2", "--out", tmp_path / "ens")
    assert res.code == 0, res.err
    md = (tmp_path / "ens" / "report" / "report.md").read_text()
    assert "Maps: occlusion" in md
    with np.load(tmp_path / "ens" / "gallery.npz") as z:
        assert z["positive"].shape == z["negative"].shape == z["frames"].shape
        assert max(z["positive"].max(), z["negative"].max()) == 255  # both maps of a frame on its own scale


def test_export_ends_with_what_was_found_on_a_clean_terminal(finished_run, tiny_data, tmp_path):
    """A real process, so TensorFlow's C++ start-up lines would reach stderr if they were not filtered."""
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, "-m", "nas", "export", str(finished_run), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=_env_without_tf_log_level())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    last = proc.stdout.strip().splitlines()[-4:]
    t = _card(out)["metrics"]["test"]
    lo, hi = t["precision_95ci"]
    assert last[0].startswith(f"test precision {t['precision']:.3f} (95% CI {lo:.3f}-{hi:.3f}) at recall {t['recall']:.3f} (95% CI")
    assert "threshold" in last[0] and "chosen on val" in last[0]
    assert last[1] == f"model card: {out / 'MODEL_CARD.md'}" and (out / "MODEL_CARD.md").is_file()
    assert last[2].startswith(f"report:     {out / 'report' / 'report.html'} ") and (out / "report" / "report.html").is_file()
    command = last[3].removeprefix("classify frames: ").split()
    assert command[:3] == ["nas", "predict", str(out)] and command[3] == "FRAME_OR_FOLDER..."
    command[3] = str(tiny_data / "positive")
    command[command.index("--out") + 1] = str(tmp_path / "preds.csv")
    res = cli(*command[1:])
    assert res.code == 0, res.err
    assert len(list(csv.DictReader(open(tmp_path / "preds.csv")))) == len(list((tiny_data / "positive").glob("*.tif")))


def test_verbose_brings_tensorflow_lines_back(exported_run, tiny_data):
    frame = sorted((tiny_data / "positive").glob("*.tif"))[0]
    args = [sys.executable, "-m", "nas", "--verbose", "predict", str(exported_run), str(frame)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=_env_without_tf_log_level())
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^[IWE]\d{4} .*\.cc:\d+\]", proc.stderr, re.M), proc.stderr


def _env_without_tf_log_level() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "NAS_VERBOSE")}
