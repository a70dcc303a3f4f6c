"""`nas recalibrate EXPORT LABELLED_DIR`: a new threshold for a new session, from a few hundred labelled
frames of it, without retraining. The rule is the search's own (nas.objective.precision_at_recall): the
highest precision among thresholds whose recall's one-sided Wilson lower bound reaches the floor. The new
export sits beside the old one: the same network (the old SavedModel inside a new one, so probabilities are
identical), a new threshold, and a card with both operating points measured on the new frames.
"""

from __future__ import annotations

import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from nas.classifier import SAVED_MODEL, load_classifier
from nas.data import scan
from nas.errors import NasError
from nas.objective import precision_at_recall, recall_lower_bound
from nas.runlog import atomic_folder, atomic_write_json, atomic_write_text

DEFAULT_CONFIDENCE = 0.9  # a few hundred frames: a threshold tuned to exactly the floor misses it half the time


def needed_positives(floor: float, confidence: float) -> int:
    """Fewest positives whose perfect recall has a Wilson lower bound >= floor (0 confidence: 1)."""
    if confidence <= 0:
        return 1
    n = 1
    while recall_lower_bound(np.array([1.0]), n, confidence)[0] < floor - 1e-12:  # ~15 for floor and confidence 0.9
        n += 1
    return n


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float, confidence: float) -> dict[str, Any]:
    """Precision and recall at a threshold on labelled frames, with the recall's Wilson lower bound."""
    called = p >= threshold
    tp, pos = int((called & (y == 1)).sum()), int(y.sum())
    recall = tp / pos
    bound = float(recall_lower_bound(np.array([recall]), pos, confidence)[0]) if confidence > 0 else None
    return {"threshold": float(threshold), "precision": tp / int(called.sum()) if called.any() else 0.0, "recall": recall,
            "recall_lower_bound": bound, "called_positive": int(called.sum())}


def _labels(export: Path) -> tuple[str, str]:
    try:
        data = tomllib.loads((export / "experiment.toml").read_text()).get("data", {})
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    return data.get("positive", "positive"), data.get("negative", "negative")


def _scores(clf, root: Path, records) -> tuple[np.ndarray, np.ndarray]:
    rows = list(clf.classify_files(root / r.path for r in records))
    bad = [r for r in rows if r["error"] or r["frames"] != 1]
    if bad:
        why = bad[0]["error"] or f"{bad[0]['path']}: a series of {bad[0]['frames']} frames; a labelled file holds one frame"
        raise NasError(f"{why} (recalibration needs every labelled frame; {len(bad)} cannot be used)")
    return np.array([r.label for r in records], dtype=int), np.array([r["probability"] for r in rows])


def recalibrate(export: str | Path, labelled: str | Path, *, out: str | Path | None = None, recall_floor: float | None = None,
                confidence: float | None = None, batch: int = 16) -> tuple[Path, dict[str, Any]]:
    """Choose a new threshold on labelled frames of a new session and write it as a new export; returns the
    new folder and the recalibration record. Refused (NasError) when the frames cannot show the floor."""
    export, labelled = Path(export), Path(labelled)
    clf = load_classifier(export, batch=batch)
    card = clf.card
    floor = float(card["recall_floor"] if recall_floor is None else recall_floor)
    if confidence is None:
        confidence = float(card.get("recall_confidence") or 0) or DEFAULT_CONFIDENCE
    if not (0 < floor <= 1 and 0 <= confidence < 1):
        raise NasError(f"--recall-floor {floor:g} / --confidence {confidence:g}: expected 0 < floor <= 1 and 0 <= confidence < 1")
    y, p = _scores(clf, labelled, scan(labelled, *_labels(export)))
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    need = needed_positives(floor, confidence)
    if pos < need:
        best = float(recall_lower_bound(np.array([1.0]), pos, confidence)[0])
        raise NasError(f"{labelled}: {pos} positive frames cannot show recall >= {floor:g} with {confidence:g} confidence "
                       f"(even a perfect recall's Wilson lower bound is {best:.3f}); at least {need} are needed")
    op = precision_at_recall(y, p, floor, confidence)
    if op.reason:
        raise NasError(f"{labelled}: no threshold of this model reaches the floor on these frames: {op.reason}")
    record = {
        "labelled_dir": str(labelled.resolve()), "n": int(len(y)), "positives": pos, "negatives": neg,
        "recall_floor": floor, "recall_confidence": confidence, "positives_needed": need, "source_export": str(export.resolve()),
        "source_model_id": clf.model_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "new": operating_point(y, p, op.threshold, confidence),
        "previous": operating_point(y, p, float(card["threshold"]), confidence),
    }
    folder = Path(out) if out else export.parent / f"{export.name}-recalibrated-{time.strftime('%Y%m%d-%H%M%S')}"
    if folder.exists():
        raise NasError(f"{folder}: already exists; choose another --out")
    _write_export(clf, folder, record)
    return folder, record


def _write_export(clf, folder: Path, record: dict[str, Any]) -> None:
    """Everything of the old export, a SavedModel with the new threshold, and the card; renamed into place whole."""
    import tensorflow as tf

    with atomic_folder(folder, seed_from=clf.export) as tmp:
        shutil.rmtree(tmp / SAVED_MODEL, ignore_errors=True)  # replaced by one serving the new threshold
        module = _rethresholded(clf.loaded, record["new"]["threshold"], bool(clf.target_nm))
        tf.saved_model.save(module, str(tmp / SAVED_MODEL),
                            signatures={"serving_default": module.serve, "serve_uint16": module.serve_uint16})
        card = dict(clf.card)
        card.update(threshold=record["new"]["threshold"], threshold_from="recalibration", recall_floor=record["recall_floor"],
                    recall_confidence=record["recall_confidence"], recalibration=record,
                    threshold_sessions=None)  # it described the threshold this export no longer serves
        atomic_write_json(tmp / "model_card.json", card)
        md = (clf.export / "MODEL_CARD.md").read_text() if (clf.export / "MODEL_CARD.md").is_file() else ""
        atomic_write_text(tmp / "MODEL_CARD.md", md + _markdown(record))


def _rethresholded(base, threshold: float, physical: bool):
    """A module serving the loaded SavedModel's probabilities (the same graph) under a new threshold."""
    import tensorflow as tf

    sizes = [tf.TensorSpec([None], tf.float64, name="pixel_size_nm")] if physical else []

    class Recalibrated(tf.Module):
        def __init__(self):
            super().__init__()
            self.base = base
            self.threshold = tf.constant(threshold, tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="frames"), *sizes])
        def serve(self, frames, *pixel):
            prob = self.base.serve(frames, *pixel)["probability"]
            return {"probability": prob, "decision": prob >= self.threshold}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint16, name="frames"), *sizes])
        def serve_uint16(self, frames, *pixel):
            prob = self.base.serve_uint16(frames, *pixel)["probability"]
            return {"probability": prob, "decision": prob >= self.threshold}

    return Recalibrated()


def _markdown(r: dict[str, Any]) -> str:
    def row(name: str, op: dict[str, Any]) -> str:
        bound = f"{op['recall_lower_bound']:.3f}" if op["recall_lower_bound"] is not None else "-"
        return f"| {name} | {op['threshold']:.6g} | {op['precision']:.3f} | {op['recall']:.3f} | {bound} |"

    conf = r["recall_confidence"]
    return "\n".join([
        "", f"## Recalibration ({r['created']})", "",
        f"The threshold in force is now **{r['new']['threshold']:.6g}**, chosen on {r['n']} labelled frames of a new session "
        f"({r['positives']} positive, {r['negatives']} negative; `{r['labelled_dir']}`) for recall >= {r['recall_floor']:g} "
        f"with its one-sided {conf:g} Wilson lower bound (at least {r['positives_needed']} positives needed). "
        "The figures above are the original export's, at its own threshold.", "",
        f"| operating point (on the new frames) | threshold | precision | recall | recall {conf:g} lower bound |",
        "|---|---|---|---|---|", row("previous (from val)", r["previous"]), row("recalibrated", r["new"]), "",
        f"Source export: `{r['source_export']}` (model id {r['source_model_id']}).", "",
    ])
