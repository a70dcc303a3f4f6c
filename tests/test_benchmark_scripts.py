"""The parts of benchmarks/anchors.py and benchmarks/generalization.py that read data and model cards, on
tiny data and the shared exported run (the searches themselves are measured by the lead, not here), and
benchmarks/detail.py, recipe.py, session_adapt.py, fold_vs_ensemble.py, racing.py and selection.py end to end on tiny
cross-validated runs; costs.py on the shared finished run."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import REPO, cli, write_experiment

sys.path.insert(0, str(REPO / "benchmarks"))
import anchors  # noqa: E402
import costs as costs_bench  # noqa: E402
import detail  # noqa: E402
import fold_vs_ensemble  # noqa: E402
import generalization  # noqa: E402
import racing  # noqa: E402
import recipe  # noqa: E402
import selection  # noqa: E402
import session_adapt  # noqa: E402


def test_generalization_reads_the_card_and_judges_honesty(exported_run):
    fig = generalization.read_card(exported_run.parent)
    card = json.loads((exported_run / "model_card.json").read_text())
    assert fig["test_precision"] == card["metrics"]["test"]["precision"]
    assert fig["test_recall"] == card["metrics"]["test"]["recall"] and fig["recall_floor"] == card["recall_floor"]
    trial = [json.loads(line) for line in (exported_run.parent / "trials.jsonl").read_text().splitlines()]
    trial = next(e for e in trial if e["event"] == "trial_finished" and e["trial_id"] == card["trial_id"])
    assert fig["val_estimate"] == trial["objective"]
    # judged against the card's prediction for a split like the test split, stated before test was read
    expected = (card.get("expected_on_test") or {}).get("precision")
    assert fig["val_ci95"] == (expected or trial["objective_ci95"])
    assert fig["expected_test_precision_95"] == expected
    lo, hi = fig["val_ci95"]
    inside = generalization.judge({**fig, "test_precision": (lo + hi) / 2, "test_recall": 0.86}, slack=0.05)
    assert inside["honest"] is True and inside["recall_ok"] is True
    outside = generalization.judge({**fig, "test_precision": hi + 0.01, "test_recall": 0.84}, slack=0.05)
    assert outside["honest"] is False and outside["recall_ok"] is False


def test_generalization_reuses_a_result_made_with_the_same_experiment_file_elsewhere(tmp_path):
    from types import SimpleNamespace

    exp = tmp_path / "a" / "haadf.toml"
    exp.parent.mkdir()
    exp.write_text((generalization.REPO / "experiments" / "haadf.toml").read_text())
    args = SimpleNamespace(seed=20, n=100, size=32, experiment=exp, budget_min=1, set=[], groups=0, space=None)
    kept = generalization.settings(args, "base")
    copy = tmp_path / "b" / "haadf.toml"  # the same file in another checkout
    copy.parent.mkdir()
    copy.write_text(exp.read_text())
    assert generalization.same_settings(kept, generalization.settings(SimpleNamespace(**{**vars(args), "experiment": copy}), "base"))
    copy.write_text(exp.read_text().replace("time_budget = 900", "time_budget = 901"))  # another experiment
    assert not generalization.same_settings(kept, generalization.settings(SimpleNamespace(**{**vars(args), "experiment": copy}), "base"))
    assert not generalization.same_settings(kept, generalization.settings(SimpleNamespace(**{**vars(args), "budget_min": 2}), "base"))
    assert not generalization.same_settings(None, kept)


def test_generalization_judges_an_export_on_freshly_drawn_sessions(tmp_path, exported_run):
    """Fresh sessions of a family (the same frames however often drawn) go through `nas predict` at the
    export's threshold, once per export; pooled recall is the session recalls weighted by their positives,
    the figures match the predictions file, unreadable rows are counted apart, a failure is a row's error."""
    from types import SimpleNamespace

    args = SimpleNamespace(out=tmp_path, seed=20, new_sessions=3, size=32)
    data = generalization.new_sessions_data("base", args)
    rows = list(csv.DictReader(open(data / "labels.csv")))
    assert len(rows) == 3 * generalization.NEW_SESSION_FRAMES and len({r["group"] for r in rows}) == 3
    again = generalization.new_sessions_data("base", SimpleNamespace(**{**vars(args), "out": tmp_path / "other"}))
    assert (again / "labels.csv").read_text() == (data / "labels.csv").read_text()

    run = exported_run.parent
    card = generalization.read_card(run)
    fig = generalization.on_new_sessions("base", args, run, card)
    assert fig["sessions"] == 3 and fig["n"] == len(rows) and fig["unreadable"] == 0
    assert fig["positives"] == sum(r["label"] == "positive" for r in rows)
    per = list(fig["per_session"].values())
    assert sum(s["positives"] for s in per) == fig["positives"]
    weighted = sum(s["recall"] * s["positives"] for s in per if s["positives"]) / fig["positives"]
    assert fig["recall"] == pytest.approx(weighted, abs=1e-3)
    threshold = json.loads((exported_run / "model_card.json").read_text())["threshold"]
    assert card["threshold"] == threshold
    preds = list(csv.DictReader(open(fig["predictions"])))
    assert len(preds) == len(rows)
    label = {(data / r["path"]).resolve(): r["label"] == "positive" for r in rows}
    called = [label[Path(p["path"]).resolve()] for p in preds if float(p["probability"]) >= threshold]
    assert all((p["decision"] == "1") == (float(p["probability"]) >= threshold) for p in preds)
    assert fig["precision"] == pytest.approx(sum(called) / len(called) if called else 0.0, abs=1e-3)
    # a threshold chosen on these sessions themselves does at least as well as the export's, at the floor
    assert fig["recall"] < 0.9 or fig["precision_at_floor_chosen_on_them"] >= fig["precision"] - 1e-9
    # which kinds of frame were called: every frame counted once under its kind and label
    by_kind = fig["called_by_kind"]
    kinds = {(r["kind"], r["label"]) for r in rows}
    assert set(by_kind) == {f"{k} ({lab})" for k, lab in kinds}
    assert sum(v["frames"] for v in by_kind.values()) == len(rows)
    assert sum(v["called"] for v in by_kind.values()) == sum(float(p["probability"]) >= threshold for p in preds)

    # predicted once per export: kept while the export is the same, redone when it is not
    csv_path = Path(fig["predictions"])
    before = csv_path.stat().st_mtime_ns
    assert generalization.predictions_for(run, data) == csv_path and csv_path.stat().st_mtime_ns == before
    csv_path.with_suffix(".model_id").write_text("another export\n")
    generalization.predictions_for(run, data)
    assert csv_path.stat().st_mtime_ns != before

    # a row nas predict could not read is counted and left out
    broken = tmp_path / "broken.csv"
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    bad = dict.fromkeys(header, "")
    bad.update(path=str(data / "positive" / "missing.tif"), error="unreadable")
    broken.write_text("\n".join(lines + [",".join(bad[h] for h in header)]) + "\n")
    scored = generalization.score_new_sessions(broken, data, threshold, 0.9)
    assert scored["unreadable"] == 1 and scored["n"] == len(rows) and scored["precision"] == fig["precision"]

    # each session counted inside the card's interval only where the test split was one session
    lowest = min(s["recall"] for s in per if s["recall"] is not None)
    one = {**card, "test_sessions": 1, "expected_test_precision_95": None, "expected_test_recall_95": [lowest, lowest]}
    inside = generalization.sessions_inside(fig, one)
    assert "precision" not in inside
    assert inside["recall"] == [sum(s["recall"] == lowest for s in per), sum(s["recall"] is not None for s in per)]
    assert generalization.sessions_inside(fig, {**one, "test_sessions": 2}) == {}

    failed = generalization.on_new_sessions("base", args, tmp_path / "no-run" / "results" / "x" / "run", card)
    assert set(failed) == {"error"} and failed["error"]


@pytest.mark.parametrize("option, expected", [
    (["--groups", "2"], "--groups 2: expected 3 to 100 sessions of at least 20 frames (--n 2000)"),
    (["--groups", "5", "--n", "50"], "--groups 5: --n 50 frames cannot make 3 sessions of at least 20; give --n 60 or more"),
    (["--new-sessions", "-1"], "--new-sessions -1: expected 0 (off) to 64 sessions"),
])
def test_generalization_refuses_bad_session_counts_in_one_line(option, expected):
    import subprocess

    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generalization.py"), *option],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == expected


def test_generalization_keeps_results_through_a_comment_edit_but_not_a_setting_change(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[budget]\nepochs = 40   # per fold\n')
    digest = generalization.experiment_digest(exp)
    exp.write_text('# a new comment\n[budget]\nepochs = 40   # per fold, the cosine schedule spans them\n')
    assert generalization.experiment_digest(exp) == digest
    exp.write_text('[budget]\nepochs = 30\n')
    assert generalization.experiment_digest(exp) != digest


def test_anchor_frames_from_any_labelled_folder_keep_groups_apart(tmp_path, tiny_data):
    """labels.csv with groups: a grouped split, frames normalized to the anchors' size, reused when unchanged."""
    from nas.config import load_experiment

    exp = load_experiment(write_experiment(tmp_path / "e.toml", tiny_data))
    out = tmp_path / "frames.npz"
    key = anchors.make_frames(tiny_data, exp, 24, out)
    saved = np.load(out)
    assert saved["x"].shape == (60, 24, 24) and 0 <= saved["x"].min() and saved["x"].max() <= 1
    group = {r["path"]: r["group"] for r in csv.DictReader(open(tiny_data / "labels.csv"))}
    spans = {}
    for path, split in zip(saved["paths"].tolist(), saved["splits"].tolist(), strict=True):
        spans.setdefault(group[path], set()).add(split)
    assert all(len(s) == 1 for s in spans.values()) and {"train", "val", "test"} == set().union(*spans.values())
    mtime = out.stat().st_mtime_ns
    assert anchors.make_frames(tiny_data, exp, 24, out) == key and out.stat().st_mtime_ns == mtime


def test_anchor_frames_of_mixed_sizes_from_class_folders(tmp_path):
    from nas.config import load_experiment

    rng = np.random.default_rng(0)
    for i in range(24):
        label = "positive" if i % 2 else "negative"
        (tmp_path / "d" / label).mkdir(parents=True, exist_ok=True)
        shape = (40 + 4 * (i % 3), 52)  # non-square, three heights
        tifffile.imwrite(tmp_path / "d" / label / f"f{i}.tif", rng.integers(0, 4000, shape).astype(np.uint16))
    exp = load_experiment(write_experiment(tmp_path / "e.toml", tmp_path / "d"))
    assert anchors.smallest_side(tmp_path / "d", exp) == 44  # of the first frame, positive/f1.tif: 44 x 52
    anchors.make_frames(tmp_path / "d", exp, 32, tmp_path / "f.npz")
    assert np.load(tmp_path / "f.npz")["x"].shape == (24, 32, 32)


def test_generalization_refuses_unknown_families(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["generalization.py", "--families", "base,cryo"])
    with pytest.raises(SystemExit, match="--families: unknown family cryo"):
        generalization.parse_args()
    monkeypatch.setattr(sys, "argv", ["generalization.py", "--families", "base", "--held-out", "rare"])
    with pytest.raises(SystemExit, match="--held-out: rare not among --families"):
        generalization.parse_args()


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, easy_data):
    """A one-trial 3-fold run whose space has a one-block warm start (with spatial dropout and dropout); shared
    by the tests below, which only read it (session_adapt's adds an export)."""
    tmp_path = tmp_path_factory.mktemp("cv_run")
    space = tmp_path / "w.yaml"
    space.write_text("name: w\nblocks:\n  count: {int: [1, 2]}\n  filters: 4\n  dropout: 0.1\nhead:\n  dropout: 0.4\n"
                     "warm_start:\n  - {blocks.count: 1}\n")
    exp = write_experiment(tmp_path / "e.toml", easy_data, search={"space": str(space)},
                           objective={"recall_floor": 0.9, "folds": 3, "racing": False}, budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    return tmp_path / "res" / "tiny" / "r"


def test_detail_trains_both_inputs_on_every_fold_and_reports_their_difference(cv_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["detail.py", "--run", str(cv_run), "--size", "16"])
    detail.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["fold"], r["variant"], r["read_px"]) for r in out["rows"]] == [
        (k, name, px) for k in range(3) for name, px in (("resized", 16), ("folded", 32))]
    assert out["epochs"] == 1
    resized, folded = out["rows"][0], out["rows"][1]
    assert folded["params"] - resized["params"] == 3 * 9 * 4  # the first conv sees 4 channels instead of 1
    for r in out["rows"]:
        assert 0 <= r["pr_auc"] <= 1 and 0 <= r["precision_at_floor"] <= 1 and r["seconds"] > 0
    assert out["folded_minus_resized"]["pr_auc"] == pytest.approx(out["folded"]["pr_auc"] - out["resized"]["pr_auc"], abs=2e-4)


def test_recipe_scores_each_variant_out_of_fold_as_the_search_would(cv_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--run", str(cv_run), "--variant", "group:blocks.normalization=group",
                                      "--variant", "wider:blocks.filters=6,blocks.dropout=0.1",
                                      "--variant", "small:input.image_size=16",
                                      "--variant", "session:training.class_weight=session"])
    recipe.main()
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert [(r["fold"], r["variant"]) for r in out["rows"]] == [
        (k, name) for k in range(3) for name in ("warm-start", "group", "wider", "small", "session")]
    session = out["variants"]["session"]  # an experiment key: the same network, other loss weights
    assert session["changes"] == {"training.class_weight": "session"} and session["params"] == out["variants"]["warm-start"]["params"]
    base, group, wider, small = (out["variants"][n] for n in ("warm-start", "group", "wider", "small"))
    assert (base["size"], small["size"]) == (32, 16) and small["params"] == base["params"]  # global pooling head
    assert group["changes"] == {"blocks.normalization": "group"} and wider["changes"] == {"blocks.filters": 6, "blocks.dropout": 0.1}
    assert wider["params"] > base["params"]
    for fig in out["variants"].values():  # the session rule's threshold qualifies under the plain rule too
        assert 0 <= fig["objective"] <= fig["plain_precision"] + 1e-9 <= 1 + 1e-9 and 0 <= fig["pr_auc"] <= 1
        assert fig["threshold"] <= fig["plain_threshold"] + 1e-4  # ... and is never above the plain one
    assert group["minus_base"]["pr_auc"] == pytest.approx(group["pr_auc"] - base["pr_auc"], abs=2e-4)
    assert "| group |" in "\n".join(lines)
    assert all(fig["called_by_kind"] == {} for fig in out["variants"].values())  # its labels.csv names no kind
    assert "negatives called positive" not in "\n".join(lines)
    for variant, why in (("odd:blocks.colour=red", "--variant odd: unknown key 'blocks.colour'"),
                         ("typo:blocks.normalization=grup", "--variant typo: blocks.normalization: expected one of none, batch"),
                         ("long:training.epochs=0", "--variant long: training.epochs"),
                         ("cw:training.class_weight=chip", "--variant cw: .*training.class_weight")):
        monkeypatch.setattr(sys, "argv", ["recipe.py", "--run", str(cv_run), "--variant", variant])
        with pytest.raises(SystemExit, match=why):
            recipe.main()
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--run", str(cv_run), "--variant", "g:blocks.normalization=group",
                                      "--folds", "0,5"])
    with pytest.raises(SystemExit, match="--folds 0,5: the run has folds 0, 1, 2"):
        recipe.main()


def test_recipe_names_the_session_that_ranks_worst_and_its_recall_at_the_threshold():
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.9, 0.6, 0.1, 0.5, 0.4])
    g = np.array(["a", "a", "a", "a", "b", "b", "b", "b", "c", "c"])  # c has no positive: it ranks nothing
    out = recipe.hardest_session(y, p, g, threshold=0.5)
    assert out["hardest_session"] == "b" and out["hardest_recall"] == 0.5  # 0.3 is missed, 0.9 called
    assert out["hardest_pr_auc"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)  # ranked 0.9 +, 0.6 -, 0.3 +, 0.1 -
    assert recipe.hardest_session(y, p, np.array([""] * 10), 0.5) == {}


def test_recipe_counts_the_negatives_each_variant_calls_by_the_kind_labels_csv_names(tmp_path, capsys):
    import common

    from nas.data import Record

    (tmp_path / "labels.csv").write_text("path,label,group,kind\nn/a.tif,negative,s0,drift\nn/b.tif,negative,s0,drift\n"
                                         "p/c.tif,positive,s1,single\nn/d.tif,negative,s1,empty\n")
    records = [Record("p/c.tif", 1, "s1"), Record("n/a.tif", 0, "s0"), Record("n/e.tif", 0, "s1"), Record("n/b.tif", 0, "s0")]
    kinds = common.frame_kinds(records, tmp_path)
    assert kinds.tolist() == ["single", "drift", "", "drift"]  # in the records' order; a frame it does not list: ""
    assert common.frame_kinds(records, tmp_path / "elsewhere").tolist() == [""] * 4
    y, called = np.array([1, 0, 0, 0]), np.array([True, True, True, False])
    by_kind = common.called_by_kind(y, kinds, called)
    assert by_kind == {"drift (negative)": {"frames": 2, "called": 1}, "single (positive)": {"frames": 1, "called": 1}}
    plain = common.called_by_kind(y, kinds, np.array([True, True, True, True]))
    recipe.print_negatives_called({"warm-start": {"called_by_kind": by_kind, "called_by_kind_plain": plain},
                                   "v": {"called_by_kind": {}, "called_by_kind_plain": {}}})
    own, at_plain = capsys.readouterr().out.split("plain rule's threshold")
    assert "| negatives called positive, out of fold, at its threshold | drift |" in own
    assert "| warm-start | 1/2 |" in own and "| v | - |" in own
    assert "| warm-start | 2/2 |" in at_plain and "| v | - |" in at_plain


def test_recipe_lengths_a_variant_its_own_then_asked_then_the_warm_starts_then_the_budgets():
    from types import SimpleNamespace

    exp = SimpleNamespace(budget=SimpleNamespace(epochs=40))
    variants = {"warm-start": {}, "long": {"training.epochs": 80}}
    assert recipe.variant_epochs({"training.epochs": 60}, variants, 0, exp) == (60, {"warm-start": 60, "long": 80})
    assert recipe.variant_epochs({"training.epochs": 60}, variants, 10, exp) == (10, {"warm-start": 10, "long": 80})
    assert recipe.variant_epochs({}, variants, 0, exp) == (40, {"warm-start": 40, "long": 80})


def test_recipe_scores_weights_averaged_over_the_last_epochs_from_the_same_training(cv_run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--run", str(cv_run), "--variant", "wider:blocks.filters=6,training.epochs=4",
                                      "--average-last", "0.5", "--epochs", "2", "--folds", "0,1"])
    recipe.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    labels = ["warm-start", "warm-start+avg", "wider", "wider+avg"]
    assert [(r["fold"], r["variant"]) for r in out["rows"]] == [(k, name) for k in (0, 1) for name in labels]
    assert out["average_from_epoch"] == {"warm-start": 1, "wider": 2}  # a variant's own length: its last half
    assert (out["variants"]["warm-start"]["epochs"], out["variants"]["wider"]["epochs"]) == (2, 4)
    for name in ("warm-start", "wider"):
        plain, averaged = out["variants"][name], out["variants"][f"{name}+avg"]
        assert (plain["averaged"], averaged["averaged"]) == (False, True)
        assert averaged["changes"] == plain["changes"] and averaged["seconds"] == plain["seconds"]  # one training
        assert 0 <= averaged["objective"] <= averaged["plain_precision"] + 1e-9
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--run", str(cv_run), "--variant", "w:blocks.filters=6",
                                      "--average-last", "1.5"])
    with pytest.raises(SystemExit, match="--average-last 1.5: expected a fraction"):
        recipe.main()


def test_weight_average_is_the_mean_of_epoch_ends_with_batch_norm_re_estimated():
    """Weights from the chosen epochs on are averaged (the earlier ones left out), and batch norm's statistics
    are then those of the averaged network's own activations on the given batches, not the mean of the saved ones."""
    import common
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    averager = common.weight_average(first=1)
    averager.set_model(model)
    kernels = []
    for epoch in range(3):
        weights = [np.full_like(w, epoch + 1.0) for w in model.get_weights()]
        model.set_weights(weights)
        kernels.append(weights[0])
        averager.on_epoch_end(epoch)
    x = [np.random.default_rng(k).normal(size=(8, 3)).astype("float32") for k in range(3)]
    averager.apply(model, [(b, None) for b in x])
    kernel, bias = model.layers[0].get_weights()
    np.testing.assert_allclose(kernel, (kernels[1] + kernels[2]) / 2)  # epochs 1 and 2 only: 2.5
    dense = np.concatenate([b @ kernel + bias for b in x])
    batch_means = np.mean([(b @ kernel + bias).mean(axis=0) for b in x], axis=0)
    np.testing.assert_allclose(model.layers[1].moving_mean.numpy(), batch_means, rtol=1e-5)
    assert not np.allclose(model.layers[1].moving_mean.numpy(), 2.5)  # re-estimated, not the saved mean
    assert model.layers[1].momentum == pytest.approx(0.99) and dense.shape == (24, 2)


def test_session_adapt_reproduces_the_card_as_shipped_and_leaves_the_models_as_they_were(cv_run, monkeypatch, capsys):
    assert cli("export", cv_run).code == 0
    monkeypatch.setattr(sys, "argv", ["session_adapt.py", str(cv_run)])
    session_adapt.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0]
    card = json.loads((cv_run / "export" / "model_card.json").read_text())
    shipped, adapted = out["variants"]["shipped"], out["variants"]["adapted"]
    # as shipped: the card's threshold and test figures, recomputed from the fold models
    assert shipped["threshold"] == pytest.approx(card["threshold"], abs=1e-4)
    assert shipped["test_precision"] == pytest.approx(card["metrics"]["test"]["precision"], abs=1e-4)
    assert shipped["test_recall"] == pytest.approx(card["metrics"]["test"]["recall"], abs=1e-4)
    for fig in (shipped, adapted):
        assert 0 <= fig["oof_objective"] <= 1 and 0 <= fig["test_pr_auc"] <= 1

    # adapting uses the session's own statistics, with dropout off (the same twice), and puts the model back
    from nas.export import members
    from nas.reopen import reopen

    opened = reopen(cv_run)
    chosen = members.choose(opened.run, str(card["trial_id"]), 1)
    size = members.image_size(opened, chosen)
    _, per_member = members.network(opened, chosen, size)
    model = per_member[0][0]
    x = np.random.default_rng(0).random((6, size, size, 1)).astype(np.float32)
    before = np.asarray(model.predict_on_batch(x)).ravel()
    once = session_adapt.adapted(model, x, tta=True)
    assert np.allclose(session_adapt.adapted(model, x, tta=True), once, atol=1e-6)
    assert not np.allclose(once, before, atol=1e-4)
    assert np.array_equal(np.asarray(model.predict_on_batch(x)).ravel(), before)
    import keras

    from nas.models import all_layers

    rates = sorted(layer.rate for layer in all_layers(model) if isinstance(layer, keras.layers.Dropout))
    assert rates == [0.1, 0.4]  # spatial dropout in the block, dropout in the head: both put back


def test_fold_vs_ensemble_scores_the_export_as_nas_predict_does_and_each_fold_model_alone(cv_run, easy_data, tmp_path,
                                                                                          monkeypatch, capsys):
    if not (cv_run / "export" / "model_card.json").is_file():
        assert cli("export", cv_run).code == 0
    monkeypatch.setattr(sys, "argv", ["fold_vs_ensemble.py", str(cv_run), str(easy_data)])
    fold_vs_ensemble.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = json.loads((cv_run / "export" / "model_card.json").read_text())
    models = out["models"]
    assert list(models) == ["out of fold (where the threshold was chosen)", "fold 0 alone", "fold 1 alone", "fold 2 alone",
                            "fold average (the export)", "out of fold, each fold model Platt-scaled",
                            "average of the Platt-scaled fold models, new sessions"]
    assert out["threshold"] == pytest.approx(card["threshold"])
    assert len(out["platt"]["by_fold"]) == 3 and 0 < out["platt"]["threshold"] < 1
    scaled = models.pop("out of fold, each fold model Platt-scaled")  # rescored, the threshold chosen again on it
    assert scaled["sessions_keeping_floor"][1] == models["out of fold (where the threshold was chosen)"]["sessions_keeping_floor"][1]
    assert models.pop("average of the Platt-scaled fold models, new sessions")["sessions_keeping_floor"][1] == 6
    # the fold average is the export: the same figures as `nas predict` on the same frames at the same threshold
    assert cli("predict", cv_run / "export", easy_data, "--out", tmp_path / "p.csv").code == 0
    truth = {r["path"].split("/")[-1]: r["label"] == "positive" for r in csv.DictReader(open(easy_data / "labels.csv"))}
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    y = np.array([truth[Path(r["path"]).name] for r in rows], int)
    called = np.array([float(r["probability"]) >= card["threshold"] for r in rows])
    assert models["fold average (the export)"]["recall"] == pytest.approx(called[y == 1].mean(), abs=1e-4)
    assert models["fold average (the export)"]["precision"] == pytest.approx(y[called].mean(), abs=1e-4)
    oof = models.pop("out of fold (where the threshold was chosen)")
    assert oof["sessions_keeping_floor"][1] < 6  # the test split's session is not out of fold
    for fig in models.values():  # the six sessions of the frames given
        assert 0 <= fig["recall"] <= 1 and fig["sessions_keeping_floor"][1] == 6


def test_fold_vs_ensemble_platt_scaling_recovers_a_known_scale_and_keeps_the_order():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)  # true scale: slope 0.5, intercept -1
    prob = 1 / (1 + np.exp(-z))
    slope, intercept = fold_vs_ensemble.platt(y, prob)
    assert slope == pytest.approx(0.5, abs=0.08) and intercept == pytest.approx(-1.0, abs=0.15)
    again = fold_vs_ensemble.rescaled(prob, slope, intercept)
    assert (np.argsort(again, kind="stable") == np.argsort(prob, kind="stable")).all()  # monotone: ranks kept


def test_racing_replay_and_selection_on_a_run_searched_without_racing(tmp_path, easy_data, finished_run,
                                                                     monkeypatch, capsys):
    exp = write_experiment(tmp_path / "e.toml", easy_data, objective={"recall_floor": 0.9, "folds": 3, "racing": False},
                           budget={"max_trials": 4, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    run = tmp_path / "res" / "tiny" / "r"
    monkeypatch.setattr(sys, "argv", ["racing.py", str(run)])
    racing.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0]
    rows = out["rows"]
    assert out["trials"] == len(rows) == 4 and rows[0]["incumbent"] is None
    for i, row in enumerate(rows[1:], start=1):
        earlier = rows[:i]
        assert row["incumbent_objective"] == max(r["objective"] for r in earlier)  # the best finished before it
        if row["objective"] != row["incumbent_objective"]:
            assert row["beat_incumbent"] == (row["objective"] > row["incumbent_objective"])
        assert row["raced_out"] == bool(row["why"]) and (not row["why"] or "raced out after 1 of 3 folds" in row["why"])
    challengers = rows[1:]
    assert out["stopped"] == sum(r["raced_out"] for r in challengers)
    assert out["false_stops"] + out["went_on_and_won"] == sum(r["beat_incumbent"] for r in challengers)
    assert out["stopped"] - out["false_stops"] + out["went_on_and_lost"] == sum(not r["beat_incumbent"] for r in challengers)
    monkeypatch.setattr(sys, "argv", ["racing.py", str(finished_run)])
    with pytest.raises(SystemExit, match="needs a cross-validated run searched without it"):
        racing.main()

    # selection: each complete trial's test figures are those `nas export --trial ID` would report
    monkeypatch.setattr(sys, "argv", ["selection.py", str(run)])
    selection.main()
    picked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0]
    assert [r["trial_id"] for r in picked["trials"]] == sorted(r["trial_id"] for r in rows)
    best = max(picked["trials"], key=lambda r: r["objective"])
    assert picked["objective"]["picks"] == best["trial_id"]
    assert cli("export", run, "--trial", best["trial_id"]).code == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert best["test_precision"] == pytest.approx(card["metrics"]["test"]["precision"], abs=1e-4)
    assert best["test_recall"] == pytest.approx(card["metrics"]["test"]["recall"], abs=1e-4)


def test_selection_judges_each_criterion_by_the_trial_it_picks():
    rows = [{"trial_id": "a", "objective": 0.8, "pr_auc": 0.90, "test_precision": 0.7},
            {"trial_id": "b", "objective": 0.9, "pr_auc": 0.80, "test_precision": 0.9},
            {"trial_id": "c", "objective": 0.7, "pr_auc": 0.95, "test_precision": 0.6}]
    verdict = selection.judge(rows)
    assert verdict["objective"] == {"spearman": 1.0, "picks": "b", "its_test_precision": 0.9}
    assert verdict["pr_auc"] == {"spearman": -1.0, "picks": "c", "its_test_precision": 0.6}
    assert verdict["best_test_precision"] == 0.9


def test_costs_replay_predicts_each_trial_from_the_ones_before_it(finished_run, monkeypatch, capsys):
    from nas.reopen import reopen
    from nas.runlog import read_trials
    from nas.search import costs

    monkeypatch.setattr(sys, "argv", ["costs.py", str(finished_run)])
    costs_bench.main()
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    opened = reopen(finished_run)
    first, second = sorted(read_trials(opened.run.trials_log).values(), key=lambda t: t.time)
    (w1, per1), (w2, per2) = costs.timed([first, second], opened.space, 32)
    epochs = second.seconds / per2
    (row,) = out["runs"][0]["rows"]  # the first trial has nothing before it to be predicted from
    assert row["trial_id"] == second.trial_id and out["trials"] == 1
    assert row["cost_blind"] == pytest.approx(per1 * epochs, abs=0.06)
    assert row["cost_model"] == pytest.approx(per1 / costs.fit([]).relative(w1) * costs.fit([]).relative(w2) * epochs, abs=0.06)
    assert out["cost_model_median_error"] == pytest.approx(abs(row["cost_model"] / row["seconds"] - 1), abs=2e-3)
    assert lines[0].startswith("| run | trials predicted |")


def test_generalization_keeps_data_of_another_balance_apart():
    from types import SimpleNamespace

    plain = SimpleNamespace(out=Path("o"), seed=20, n=2000, size=128, groups=None, positive_rate=None, rate_spread=None)
    skewed = SimpleNamespace(**{**vars(plain), "positive_rate": 0.25, "rate_spread": 0.6})
    assert generalization.data_options(plain) == () and generalization.balance_suffix(plain) == ""
    assert generalization.data_options(skewed) == ("--positive-rate", 0.25, "--rate-spread", 0.6)
    assert generalization.family_folder("magnification", skewed).name == "magnification-seed21-n2000-128px-p0.25-s0.6"
    assert generalization.family_folder("magnification", plain).name == "magnification-seed21-n2000-128px"
