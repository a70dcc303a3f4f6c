"""Writing an export: the SavedModel that serves raw frames, model.keras, the model card (JSON and
Markdown), plots of the test split, and copies of the run's log and split. Everything goes to a temporary
folder that is renamed into place at the end, so a failed export leaves no half-written model behind."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from nas import drift as drift_mod
from nas.export.calibrate import Calibration, sessions_at_threshold
from nas.export.members import Member
from nas.prepare import RunFrames
from nas.reopen import OpenRun
from nas.report import write_export_report
from nas.runlog import atomic_folder, atomic_write_json, atomic_write_text, read_events, read_trials
from nas.trial import Event

SAVED_MODEL = "saved_model"
PACKAGES = ("stem-nas", "tensorflow", "keras", "keras-tuner", "autokeras", "numpy", "scikit-learn", "tifffile")


def write_export(final: Path, opened: OpenRun, members: list[Member], net, size: int, frames: RunFrames, cal: Calibration,
                 results: dict, *, latency: float | None, refit: dict | None) -> Path:
    """Everything an export holds, written whole into `final` or not at all."""
    import tensorflow as tf

    run, clip = opened.run, tuple(opened.exp.data.clip_percentiles)
    with atomic_folder(final) as tmp:
        module = serving_module(net, size, clip, cal.op.threshold, tta=opened.exp.augment.tta,
                                pixel_size_nm=opened.exp.data.pixel_size_nm)
        tf.saved_model.save(module, str(tmp / SAVED_MODEL),
                            signatures={"serving_default": module.serve, "serve_uint16": module.serve_uint16})
        net.save(tmp / "model.keras")
        for src in (run.trials_log, run.split, run.experiment, run.space):
            shutil.copy2(src, tmp / src.name)
        card = model_card(opened, members, net, size, cal, results["metrics"], latency=latency, refit=refit)
        drift_mod.describe_export(card, tmp, frames.cached.meta, _training_rows(frames), cal.rows, cal.prob,
                                  opened.exp.data.signal, opened.exp.data.pixel_size_nm)
        card["expected_on_test"] = {**results["expected_on_test"], "note": "95% intervals of test precision and recall "
                                    f"at the threshold, predicted from the {cal.split} probabilities before the test split was read"}
        atomic_write_json(tmp / "model_card.json", card)
        atomic_write_text(tmp / "MODEL_CARD.md", _card_markdown(card))
        _plots(tmp, results["y_test"], results["p_test"], cal.op.threshold, opened.exp.objective.recall_floor,
               results["metrics"]["test"])
        # the report's one input from export: the test split as scored above (saved for `nas report`)
        write_export_report(tmp, net, frames.stores[size], results["test_rows"], results["y_test"], results["p_test"],
                            cal.op.threshold, [frames.cached.records[i].path for i in results["test_rows"]], run=run.path)
    return final


def model_card(opened: OpenRun, members: list[Member], net, size: int, cal: Calibration, metrics: dict, *,
               latency: float | None, refit: dict | None) -> dict[str, Any]:
    """What the export is, how it was chosen and what it scored, split by split."""
    exp, run, best = opened.exp, opened.run, members[0].record
    several = len(members) > 1 or len(members[0].weights) > 1
    return {
        "experiment": exp.name, "run": str(run.path), "trial_id": best.trial_id,
        "hyperparameters": best.hyperparameters, "architecture": opened.space.name,
        "params": int(net.count_params()) if several else best.params,
        "latency_ms_batch1": latency if several else best.latency_ms,
        "ensemble": [m.trial_id for m in members] if len(members) > 1 else None,
        "folds": len(members[0].weights) if len(members[0].weights) > 1 else None,
        "threshold": cal.op.threshold, "recall_floor": exp.objective.recall_floor, "threshold_from": cal.split,
        "recall_confidence": exp.objective.recall_confidence, "threshold_note": cal.op.note or None,
        "threshold_sessions": sessions_at_threshold(cal, exp.objective.recall_floor, exp.objective.recall_confidence),
        "search_estimate": {"objective": best.objective, "ci95": list(best.objective_ci95 or ()), "split": best.split},
        "refit": refit,
        "initial_weights": _initial_weights(exp.training.init_weights) if best.from_init else None,
        "keras_file_needs": "autokeras (AutoKeras layers)" if exp.search.tuner == "autokeras" else "keras only",
        "tta": exp.augment.tta,
        "trained_in": best.precision_policy or "float32", "serves_in": "float32",
        "max_probability_change_from_search": cal.drift_from_search,
        "input": {"image_size": size, "clip_percentiles": list(exp.data.clip_percentiles),
                  "frames": "raw 2-D frames, any size, float32 or uint16"},
        "metrics": metrics,
        "search": {"tuner": exp.search.tuner, "trials": len(read_trials(run.trials_log)),
                   "objective": f"precision at recall >= floor on {best.split}", "tie_break": exp.objective.tie_break},
        "seed": {"data": exp.data.seed, "search": exp.search.seed},
        "searched_on": _machines(run), "versions": _versions(), "trials_log_sha256": _sha256(run.trials_log),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _training_rows(frames: RunFrames):
    """The frames the exported model learnt from (the drift reference's training distribution)."""
    return frames.rows("train", "val") if frames.cv else frames.rows("train")


def serving_module(model, image_size: int, clip: tuple[float, float], threshold: float, tta: bool = False,
                   pixel_size_nm: float = 0.0):
    """A tf.Module whose signatures take raw frames (B, H, W) as float32 or uint16; with a physical scale
    (data.pixel_size_nm) also each frame's pixel size in nm, `pixel_size_nm` (B,) float64."""
    import tensorflow as tf

    from nas.augment import TTA_VIEWS, dihedral_views_tf
    from nas.preprocess import normalize_tf

    sizes = [tf.TensorSpec([None], tf.float64, name="pixel_size_nm")] if pixel_size_nm else []

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.threshold = tf.constant(threshold, tf.float32)

        def _classify(self, frames, *pixel):
            x = normalize_tf(frames, image_size, clip, *(pixel or [None]), pixel_size_nm)
            if tta:  # the mean over the 8 flips and turns, as the threshold was calibrated
                prob = tf.reduce_mean(tf.reshape(self.model(dihedral_views_tf(x), training=False), [TTA_VIEWS, -1]), axis=0)
            else:
                prob = tf.reshape(self.model(x, training=False), [-1])
            return {"probability": prob, "decision": prob >= self.threshold}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="frames"), *sizes])
        def serve(self, frames, *pixel):
            return self._classify(frames, *pixel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint16, name="frames"), *sizes])
        def serve_uint16(self, frames, *pixel):
            return self._classify(frames, *pixel)

    return Serving()


def _machines(run) -> list[dict]:
    """Each processor the search ran on (its starts and resumes, its workers), once, as the log names them."""
    seen = []
    for ev in read_events(run.trials_log):
        if ev["event"] == Event.SEARCH_STARTED and ev.get("machine") and ev["machine"] not in seen:
            seen.append(ev["machine"])
    return seen


def _machine_names(machines: list[dict]) -> str:
    return "; ".join(f"{m.get('cpu')}, {m.get('cores')} cores" for m in machines)


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


def _initial_weights(path: str) -> dict[str, str]:
    """Where the winner's network started (training.init_weights), so the card names what it learnt before this
    data; the file's digest where it is still there."""
    file = Path(path)
    return {"path": path, "sha256": _sha256(file) if file.is_file() else "the file is no longer there"}


def _sessions_line(ts: dict | None) -> list[str]:
    """Which session sets the threshold, and what the same rule gives without it."""
    if not ts:
        return []
    hard, recall, w = ts["hardest"], ts["recall"], ts["without_hardest"]
    others = [r for g, r in recall.items() if g != hard]
    line = (f"- Sessions on {ts['split']} at the threshold: recall {recall[hard]:.3f} on `{hard}` (the hardest, "
            f"{ts['positives'][hard]} positives), {min(others):.3f}-{max(others):.3f} on the other {len(others)}")
    if w["reason"]:
        return [line + f"; without `{hard}` the rule finds no threshold ({w['reason']})"]
    return [line + f"; without `{hard}` the same rule would set {w['threshold']:.4g}, precision on the others "
            f"{w['precision_on_the_rest_at_this_threshold']:.3f} -> {w['precision_on_the_rest']:.3f}"]


def _card_markdown(card: dict[str, Any]) -> str:
    cal = card["threshold_from"]
    t, v = card["metrics"]["test"], card["metrics"][cal]
    ci = t.get("precision_95ci"), t.get("recall_95ci")
    fmt_ci = lambda c: f" (95% CI {c[0]:.3f}-{c[1]:.3f})" if c else ""  # noqa: E731
    cm = t["confusion_matrix"]
    lines = [
        f"# Model card: {card['experiment']} / " + (f"mean of trials {', '.join(card['ensemble'])}" if card.get("ensemble")
                                                    else f"trial {card['trial_id']}"),
        "",
        f"- Architecture family: `{card['architecture']}`, {card['params']} parameters, {card['latency_ms_batch1']} ms/frame at batch 1 (search machine)",
        f"- Threshold {card['threshold']:.6g}, chosen on **{cal}** for recall >= {card['recall_floor']}"
        + (f" (its {card['recall_confidence']:g} one-sided lower bound)" if card.get("recall_confidence") else ""),
        *_sessions_line(card.get("threshold_sessions")),
        f"- Input: raw frames of any size, normalized inside the model to {card['input']['image_size']} px",
        *([f"- Started from weights learnt before this data: `{card['initial_weights']['path']}` (training.init_weights)"]
          if card.get("initial_weights") else []),
        "",
        "| split | n | positives | precision | recall | weighted F1 | PR-AUC | precision at floor |",
        "|---|---|---|---|---|---|---|---|",
        f"| {cal} | {v['n']} | {v['positives']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['weighted_f1']:.3f} | {v['pr_auc']:.3f} | {v['precision_at_floor']:.3f} |",
        f"| test | {t['n']} | {t['positives']} | {t['precision']:.3f}{fmt_ci(ci[0])} | {t['recall']:.3f}{fmt_ci(ci[1])} | {t['weighted_f1']:.3f} | {t['pr_auc']:.3f} | {t['precision_at_floor']:.3f} |",
        "",
        *([f"{cal} = every train+val frame, scored by the one of the {card['folds']} fold models that did not train on it; "
           f"the export averages the {card['folds']} fold models.", ""] if card.get("folds") else []),
        f"Test confusion matrix at the threshold: TP {cm['tp']}, FP {cm['fp']}, FN {cm['fn']}, TN {cm['tn']}.",
        "",
        "## Hyperparameters",
        *[f"- `{k}`: {v}" for k, v in sorted(card["hyperparameters"].items())],
        "",
        f"Search: {card['search']['tuner']}, {card['search']['trials']} trials; trial log sha256 `{card['trials_log_sha256'][:16]}`.",
        *([f"Searched on: {_machine_names(card['searched_on'])}."] if card.get("searched_on") else []),
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
