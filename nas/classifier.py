"""One way from instrument files to decisions, shared by `nas predict`, `nas watch` and `nas recalibrate`:
read the frames (every format, every frame of a series), check each against the training data (drift
statistics), and classify them in batches with the export's own SavedModel signature (normalization,
resampling and threshold inside), so every command gets the probabilities the microscope computer gets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from nas import drift  # noqa: E402
from nas.errors import NasError  # noqa: E402
from nas.frames import FrameSet, read_frames  # noqa: E402

SAVED_MODEL = "saved_model"  # as nas.export writes it


@dataclass
class Job:
    """One frame on its way to a decision: the row so far, and the frame (None when it has an error)."""

    row: dict[str, Any]
    frame: np.ndarray | None = None


@dataclass
class Classifier:
    """A loaded export: its serving signature, card, threshold in force, id, and drift reference."""

    export: Path
    serve: Any
    card: dict[str, Any]
    threshold: float
    model_id: str
    signal: str
    target_nm: float
    clip: tuple[float, float]
    reference: dict[str, Any] | None = None
    batch: int = 16
    ranges: dict = field(default_factory=dict)
    loaded: Any = None  # the SavedModel object: its signatures stop working once it is collected

    def jobs(self, path: Path, frames: FrameSet | NasError) -> list[Job]:
        """One job per frame of a file; an unreadable file is one job carrying its error."""
        if isinstance(frames, NasError):
            return [Job(self._row(path, 0, None, frames=0, error=str(frames)))]  # frames 0: the file was not read
        out = []
        for i, frame in enumerate(frames.frames):
            row = self._row(path, i, frames.pixel_size_nm, frames=len(frames))
            if i in frames.problems:
                row["error"] = f"{path}" + (f" frame {i}" if frames.series else "") + f": {frames.problems[i]}"
            elif self.target_nm and not frames.pixel_size_nm:
                row["error"] = (f"{path}: no pixel size in the file; this model resamples frames to {self.target_nm:g} nm "
                                "per pixel (data.pixel_size_nm) and needs one")
            else:
                if self.ranges:  # an export made before drift references existed: unknown, not "like training"
                    off = drift.out_of_range(drift.frame_features(frame, self.clip, frames.pixel_size_nm), self.ranges)
                    row.update(in_distribution=not off, drift=" ".join(off))
                out.append(Job(row, frame))
                continue
            out.append(Job(row))
        return out

    def _row(self, path: Path, index: int, pixel: float | None, *, frames: int = 1, error: str = "") -> dict[str, Any]:
        return {"path": str(path), "frame": index, "frames": frames, "probability": "", "decision": "",
                "threshold": self.threshold, "pixel_size_nm": pixel if pixel else "", "in_distribution": "",
                "drift": "", "error": error}

    def run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """Classify the jobs' frames, batched while they share a shape; rows come back in the jobs' order."""
        import tensorflow as tf

        todo = [j for j in jobs if j.frame is not None]
        by_shape: dict[tuple[int, int], list[Job]] = {}
        for job in todo:
            by_shape.setdefault(job.frame.shape, []).append(job)
        for group in by_shape.values():
            for start in range(0, len(group), self.batch):
                chunk = group[start : start + self.batch]
                frames = np.stack([j.frame for j in chunk])
                # uint16 frames go in as they are (the graph casts them, exactly): 1024^2 frames arrive ~1.5 ms
                # sooner each than through a float32 copy (measured at batch 32)
                uint16 = frames.dtype == np.uint16 and "serve_uint16" in self.loaded.signatures
                serve = self.loaded.signatures["serve_uint16"] if uint16 else self.serve
                inputs = {"frames": tf.constant(frames if uint16 else frames.astype(np.float32))}
                if self.target_nm:
                    inputs["pixel_size_nm"] = tf.constant([float(j.row["pixel_size_nm"]) for j in chunk], tf.float64)
                prob = serve(**inputs)["probability"].numpy()
                for job, p in zip(chunk, prob, strict=True):
                    job.row["probability"] = float(p)
                    job.row["decision"] = int(float(p) >= self.threshold)
                    job.frame = None  # the frame is no longer needed: memory stays one batch
        return [j.row for j in jobs]

    def warm_up(self) -> None:
        """One call on a dummy frame the size of the training frames: the first call of a loaded SavedModel
        costs ~0.2 s and the first of each frame size ~0.08 s more (measured), which would otherwise land on
        the first frame of a session."""
        import tensorflow as tf

        side = (self.ranges.get("log_side") or [6.0, 6.0])[1]
        side = int(min(max(round(2 ** side), 16), 4096))
        inputs = {"frames": tf.constant(np.random.default_rng(0).random((1, side, side), np.float32))}
        if self.target_nm:
            inputs["pixel_size_nm"] = tf.constant([self.target_nm], tf.float64)
        self.serve(**inputs)

    def classify_files(self, paths: Iterable[Path]) -> Iterable[dict[str, Any]]:
        """Rows for many files in order, holding at most about one batch of frames at a time."""
        pending: list[Job] = []
        for path in paths:
            pending.extend(self.jobs(path, read_or_error(path, self.signal)))
            if sum(j.frame is not None for j in pending) >= self.batch:
                yield from self.run(pending)
                pending = []
        yield from self.run(pending)


def read_or_error(path: Path, signal: str) -> FrameSet | NasError:
    try:
        return read_frames(path, signal)
    except NasError as exc:
        return exc


def model_id(export: Path) -> str:
    """Hash of the export's SavedModel files and model card: what made a decision, in 16 hex digits."""
    h = hashlib.sha256()
    files = sorted(p for p in (export / SAVED_MODEL).rglob("*") if p.is_file()) + [export / "model_card.json"]
    for p in files:
        h.update(p.relative_to(export).as_posix().encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                h.update(block)
    return h.hexdigest()[:16]


def load_classifier(export: str | Path, *, threshold: float | None = None, signal: str | None = None,
                    batch: int = 16) -> Classifier:
    """The export's serving signature and what travels with it; raise NasError for a folder that is not one."""
    import tensorflow as tf

    export = Path(export)
    card_path = export / "model_card.json"
    if not (export / SAVED_MODEL).is_dir() or not card_path.is_file():
        raise NasError(f"{export}: not an export folder (expected {SAVED_MODEL}/ and model_card.json); make one with 'nas export RUN'")
    if batch < 1:
        raise NasError(f"--batch {batch}: expected 1 or more frames")
    card = json.loads(card_path.read_text())
    inputs = card.get("input", {})
    loaded = tf.saved_model.load(str(export / SAVED_MODEL))
    reference = drift.load_reference(export)
    card_signal = inputs.get("signal", "")
    return Classifier(
        export=export, serve=loaded.signatures["serving_default"], card=card,
        threshold=float(card["threshold"] if threshold is None else threshold), model_id=model_id(export),
        signal=signal if signal is not None else ("" if card_signal.startswith("auto") else card_signal),
        target_nm=float(inputs.get("pixel_size_nm") or 0.0), clip=tuple(inputs.get("clip_percentiles", (0.5, 99.5))),
        reference=reference, batch=batch, ranges=(reference or {}).get("ranges", {}), loaded=loaded,
    )
