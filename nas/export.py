"""Export the winner: best-epoch weights of the best trial, a threshold calibrated on validation data, one
evaluation of the test split, and a SavedModel that serves raw frames (normalization and threshold inside).

Everything is written to a temporary folder and renamed into place at the end, so a failed export leaves
no half-written model at the final path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from nas import cache as cache_mod  # noqa: E402
from nas import config as config_mod  # noqa: E402
from nas import data as data_mod  # noqa: E402
from nas import drift as drift_mod  # noqa: E402
from nas import splits as splits_mod  # noqa: E402
from nas.errors import NasError  # noqa: E402
from nas.objective import bootstrap_interval, classification_report, precision_at_recall, rank_key  # noqa: E402
from nas.runlog import (  # noqa: E402
    RunDir,
    atomic_write_json,
    atomic_write_text,
    read_events,
    run_lock,
    trial_records,
)
from nas.space import SearchSpace, parse_space  # noqa: E402

SAVED_MODEL = "saved_model"
PACKAGES = ("stem-nas", "tensorflow", "keras", "keras-tuner", "autokeras", "numpy", "scikit-learn", "tifffile")


def best_trial(run: RunDir, trial_id: str | None = None) -> dict[str, Any]:
    """The trial the search's own rule ranks first (or the one named), which must have finished."""
    trials = trial_records(read_events(run.trials_log))
    if trial_id is not None:
        if trial_id not in trials:
            raise NasError(f"{run.path}: no trial {trial_id!r}; trials are {', '.join(sorted(trials)) or 'none'}")
        rec = trials[trial_id]
        if rec["status"] != "finished" or not rec.get("feasible", True):
            state = rec["status"] if rec["status"] != "finished" else "infeasible"
            raise NasError(f"{run.path}: trial {trial_id} is {state}, not a finished feasible trial; it has no model to export")
        return rec
    finished = [t for t in trials.values() if t["status"] == "finished" and t.get("feasible", True)]
    if not finished:
        raise NasError(f"{run.path}: no finished feasible trial to export yet; run or resume the search first")
    return min(finished, key=rank_key)


def top_trials(run: RunDir, k: int) -> list[dict[str, Any]]:
    """The k best finished feasible trials by the search's own ranking rule."""
    trials = trial_records(read_events(run.trials_log))
    finished = sorted((t for t in trials.values() if t["status"] == "finished" and t.get("feasible", True)), key=rank_key)
    if len(finished) < k:
        raise NasError(f"{run.path}: --ensemble {k} needs {k} finished feasible trials; the run has {len(finished)}")
    return finished[:k]


def _average(models: list):
    """One Keras model whose probability is the mean of its members' (each member named after its trial)."""
    import keras

    inputs = keras.Input(models[0].input_shape[1:], name="frame")
    mean = keras.layers.Average(name="mean_probability")([m(inputs) for m in models])
    return keras.Model(inputs, mean, name="ensemble")


def trial_values(space: SearchSpace, searched: dict[str, Any]) -> dict[str, Any]:
    """A trial's full configuration: the space's constants plus the trial's searched values."""
    values = {}
    for name, dim in space.dimensions.items():
        if not dim.searched:
            values[name] = dim.constant
        elif name in searched:
            values[name] = searched[name]
        else:
            raise NasError(f"trial has no value for {name}; was the space changed after the search?")
    return values


def _serving_module(model, image_size: int, clip: tuple[float, float], threshold: float, pixel_size_nm: float = 0.0):
    """A tf.Module whose signatures take raw frames (B, H, W) as float32 or uint16; with a physical scale
    (data.pixel_size_nm) also each frame's pixel size in nm, `pixel_size_nm` (B,) float64."""
    import tensorflow as tf

    from nas.preprocess import normalize_tf

    sizes = [tf.TensorSpec([None], tf.float64, name="pixel_size_nm")] if pixel_size_nm else []

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.threshold = tf.constant(threshold, tf.float32)

        def _classify(self, frames, *pixel):
            x = normalize_tf(frames, image_size, clip, *(pixel or [None]), pixel_size_nm)
            prob = tf.reshape(self.model(x, training=False), [-1])
            return {"probability": prob, "decision": prob >= self.threshold}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="frames"), *sizes])
        def serve(self, frames, *pixel):
            return self._classify(frames, *pixel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint16, name="frames"), *sizes])
        def serve_uint16(self, frames, *pixel):
            return self._classify(frames, *pixel)

    return Serving()


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_run(run_path: str | Path, trial_id: str | None = None, out: str | Path | None = None, *, refit: bool = False,
               ensemble: int = 1) -> Path:
    """Export one trial of a run (or the mean of the top `ensemble` trials); returns the export folder.

    With refit, the architecture is retrained on train+val for the trial's best number of epochs; the
    threshold still comes from the searched model's validation probabilities (val is no longer held out).
    An ensemble's threshold is chosen on val from the averaged probabilities, like a single model's.
    """
    if ensemble < 1:
        raise NasError(f"--ensemble {ensemble}: expected 1 or more trials")
    if ensemble > 1 and (trial_id is not None or refit):
        raise NasError("--ensemble takes the top trials itself: it cannot be combined with --trial or --refit")
    run = RunDir(Path(run_path)).check_exists()
    with run_lock(run):
        return _export(run, trial_id, Path(out) if out else run.export, refit, ensemble)


def _architecture(exp: config_mod.Experiment, space: SearchSpace, trial: dict[str, Any], *, compiled: bool, frames=None,
                  decay_steps: int = 0, clear: bool = True):
    """The trial's architecture, freshly initialised: our CNN families, or the AutoKeras graph it came from."""
    import keras

    size, floor = exp["data"]["image_size"], exp["objective"]["recall_floor"]
    if exp["search"]["tuner"] == "autokeras":
        import keras_tuner

        from nas.automodel import AutoKerasHyperModel, adapt_preprocessing

        hp = keras_tuner.HyperParameters()
        hp.values.update(trial.get("hyperparameters", {}))
        model = AutoKerasHyperModel(space, size, floor).build(hp)
        if frames is not None:
            adapt_preprocessing(model, frames)
        return model
    from nas.models import build_model, build_network

    if clear:  # not between an ensemble's members: they must live in one session
        keras.backend.clear_session()
    values = trial_values(space, trial.get("hyperparameters", {}))
    return build_model(values, size, floor, decay_steps) if compiled else build_network(values, size)


def _refit(exp: config_mod.Experiment, space: SearchSpace, trial: dict[str, Any], frames, labels, rows, epochs: int):
    """Train the architecture afresh on the given rows (train+val) for a fixed number of epochs."""
    import keras

    keras.utils.set_random_seed(exp["search"]["seed"] * 100_003 + 99_991)
    batch = exp["search"]["batch_size"]
    model = _architecture(exp, space, trial, compiled=True, frames=frames[rows[:256]][..., None],
                          decay_steps=-(-len(rows) // batch) * epochs)
    ds = data_mod.make_dataset(frames, labels, rows, batch, shuffle=True, seed=exp["search"]["seed"],
                               augment=dict(exp["augment"]))
    weights = data_mod.class_weights(labels[rows]) if exp["training"]["class_weight"] == "auto" else None
    model.fit(ds, epochs=epochs, class_weight=weights, verbose=0)
    return model


def _export(run: RunDir, trial_id: str | None, final: Path, refit: bool = False, ensemble: int = 1) -> Path:
    import tensorflow as tf

    exp = config_mod.load_experiment(run.experiment, resolve_paths=False)
    space = parse_space(run.space.read_text(), str(run.space))
    members = top_trials(run, ensemble) if ensemble > 1 else [best_trial(run, trial_id)]
    trial = members[0]
    tid = trial["trial_id"]
    for member in members:
        weights = run.trial_dir(member["trial_id"]) / "best.weights.h5"
        if not weights.is_file():
            raise NasError(f"{weights}: best-epoch weights of trial {member['trial_id']} are missing")
    d = exp["data"]
    size, clip, floor = d["image_size"], tuple(d["clip_percentiles"]), exp["objective"]["recall_floor"]
    splits_mod.require_unchanged(run.split, Path(d["path"]))
    records, splits = splits_mod.read_split(run.split, d["positive"])
    cached = cache_mod.build_cache(records, Path(d["path"]), run.path.parent.parent / ".cache", size, clip, skip_bad=d["skip_bad"],
                                  **cache_mod.frame_options(d))
    kept = {r.path for r in cached.records}
    split_arr = np.array([s for r, s in zip(records, splits, strict=True) if r.path in kept])
    labels = cached.labels

    models = []
    for member in members:
        model = _architecture(exp, space, member, compiled=False, clear=not models)
        with warnings.catch_warnings():  # a compiled AutoKeras model warns that optimizer state is not loaded: not needed
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(run.trial_dir(member["trial_id"]) / "best.weights.h5")  # best epoch, BN statistics included
        model.name = f"trial_{member['trial_id']}"
        models.append(model)
    model = _average(models) if len(models) > 1 else models[0]

    def probabilities(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(split_arr == split)
        ds = data_mod.make_dataset(cached.frames, labels, rows, 64, shuffle=False)
        return labels[rows], model.predict(ds, verbose=0).ravel()

    y_val, p_val = probabilities("val")
    op = precision_at_recall(y_val, p_val, floor, exp["objective"]["recall_confidence"])
    latency = None
    if len(members) > 1:  # an ensemble costs its members' latencies together: measured, as the search measures trials
        from nas.search import measure_latency_ms

        latency = round(measure_latency_ms(model, size), 4)
    if op.reason:
        raise NasError(f"trial {tid}: cannot calibrate a threshold on validation data: {op.reason}")
    refit_info = None
    if refit:
        epochs = int(trial.get("best_epoch") or trial.get("epochs_run") or exp["budget"]["epochs"])
        rows = np.flatnonzero((split_arr == "train") | (split_arr == "val"))
        model = _refit(exp, space, trial, cached.frames, labels, rows, epochs)
        refit_info = {"on": "train+val", "epochs": epochs, "frames": int(len(rows)),
                      "note": "threshold chosen on val with the searched model, before refit"}
    y_test, p_test = probabilities("test")  # the one and only read of the test split
    test = classification_report(y_test, p_test, op.threshold, floor)
    test.update(bootstrap_interval(y_test, p_test, op.threshold, exp["export"]["bootstrap"], seed=exp["data"]["seed"]))
    val = classification_report(y_val, p_val, op.threshold, floor)
    val.update(bootstrap_interval(y_val, p_val, op.threshold, exp["export"]["bootstrap"], seed=exp["data"]["seed"]))

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tf.saved_model.save(
            module := _serving_module(model, size, clip, op.threshold, d["pixel_size_nm"]),
            str(tmp / SAVED_MODEL),
            signatures={"serving_default": module.serve, "serve_uint16": module.serve_uint16},
        )
        model.save(tmp / "model.keras")
        for src in (run.trials_log, run.split, run.experiment, run.space):
            shutil.copy2(src, tmp / src.name)
        card = {
            "experiment": exp.name, "run": str(run.path), "trial_id": tid,
            "hyperparameters": trial.get("hyperparameters", {}), "architecture": space.name,
            "params": int(model.count_params()) if len(members) > 1 else trial.get("params"),
            "latency_ms_batch1": latency if len(members) > 1 else trial.get("latency_ms"),
            "ensemble": [m["trial_id"] for m in members] if len(members) > 1 else None,
            "threshold": op.threshold, "recall_floor": floor, "threshold_from": "val",
            "recall_confidence": exp["objective"]["recall_confidence"], "threshold_note": op.note or None,
            "refit": refit_info,
            "keras_file_needs": "autokeras (AutoKeras layers)" if exp["search"]["tuner"] == "autokeras" else "keras only",
            "input": {"image_size": size, "clip_percentiles": list(clip), "frames": "raw 2-D frames, any size, float32 or uint16"},
            "metrics": {"val": val, "test": test},
            "data": splits_mod.balance(labels, split_arr),
            "search": {"tuner": exp["search"]["tuner"], "trials": len(trial_records(read_events(run.trials_log))),
                       "objective": "precision at recall >= floor on val", "tie_break": exp["objective"]["tie_break"]},
            "seed": {"data": d["seed"], "search": exp["search"]["seed"]},
            "versions": _versions(), "trials_log_sha256": _sha256(run.trials_log),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        drift_mod.describe_export(card, tmp, cached.meta, split_arr, p_val, d["signal"], d["pixel_size_nm"])
        atomic_write_json(tmp / "model_card.json", card)
        atomic_write_text(tmp / "MODEL_CARD.md", _card_markdown(card))
        _plots(tmp, y_test, p_test, op.threshold, floor, test)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _card_markdown(card: dict[str, Any]) -> str:
    t, v = card["metrics"]["test"], card["metrics"]["val"]
    ci = t.get("precision_95ci"), t.get("recall_95ci")
    fmt_ci = lambda c: f" (95% CI {c[0]:.3f}-{c[1]:.3f})" if c else ""  # noqa: E731
    cm = t["confusion_matrix"]
    lines = [
        f"# Model card: {card['experiment']} / " + (f"mean of trials {', '.join(card['ensemble'])}" if card.get("ensemble")
                                                    else f"trial {card['trial_id']}"),
        "",
        f"- Architecture family: `{card['architecture']}`, {card['params']} parameters, {card['latency_ms_batch1']} ms/frame at batch 1 (search machine)",
        f"- Threshold {card['threshold']:.6g}, chosen on **val** for recall >= {card['recall_floor']}"
        + (f" (its {card['recall_confidence']:g} one-sided lower bound)" if card.get("recall_confidence") else ""),
        f"- Input: raw frames of any size, normalized inside the model to {card['input']['image_size']} px",
        "",
        "| split | n | positives | precision | recall | weighted F1 | PR-AUC | precision at floor |",
        "|---|---|---|---|---|---|---|---|",
        f"| val | {v['n']} | {v['positives']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['weighted_f1']:.3f} | {v['pr_auc']:.3f} | {v['precision_at_floor']:.3f} |",
        f"| test | {t['n']} | {t['positives']} | {t['precision']:.3f}{fmt_ci(ci[0])} | {t['recall']:.3f}{fmt_ci(ci[1])} | {t['weighted_f1']:.3f} | {t['pr_auc']:.3f} | {t['precision_at_floor']:.3f} |",
        "",
        f"Test confusion matrix at the threshold: TP {cm['tp']}, FP {cm['fp']}, FN {cm['fn']}, TN {cm['tn']}.",
        "",
        "## Hyperparameters",
        *[f"- `{k}`: {v}" for k, v in sorted(card["hyperparameters"].items())],
        "",
        f"Search: {card['search']['tuner']}, {card['search']['trials']} trials; trial log sha256 `{card['trials_log_sha256'][:16]}`.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def _plots(folder: Path, y: np.ndarray, p: np.ndarray, threshold: float, floor: float, report: dict[str, Any]) -> None:
    """PR curve (floor and threshold marked), confusion matrix and score histograms, all on the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(rec, prec, lw=1.5)
    ax.axvline(floor, color="gray", ls="--", lw=1, label=f"recall floor {floor:g}")
    ax.plot([report["recall"]], [report["precision"]], "o", color="C3", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="recall", ylabel="precision", title="PR curve (test split)", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(folder / "pr_curve.png", dpi=100)
    plt.close(fig)

    cm = report["confusion_matrix"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["neg", "pos"], yticklabels=["neg", "pos"],
           xlabel="predicted", ylabel="true", title="Confusion (test split)")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bins = np.linspace(0, 1, 26)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label="negative")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label="positive")
    ax.axvline(threshold, color="C3", lw=1, label="threshold")
    ax.set(xlabel="probability", ylabel="frames", title="Scores by class (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "score_histograms.png", dpi=100)
    plt.close(fig)
