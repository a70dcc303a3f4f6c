"""Does a frame look like the training data, and does a session's stream of scores look like validation?

Per frame: six cheap statistics of the raw frame (below), computed by the same function when the training
cache is built and when a frame is classified, checked against ranges from the training frames that the
export stores in `drift_reference.json`. Per session: a window of recent scores against the validation
scores (two-sample Kolmogorov-Smirnov), the positive rate and the flag rate against validation's (two-
proportion z-tests), at a small alpha because the test is repeated as frames arrive.
"""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from nas.preprocess import EPS, _stride, percentiles

REFERENCE_FILE = "drift_reference.json"
FEATURES = ("log_range", "mean", "std", "roughness", "log_side", "log_pixel_nm")
QUANTILES = (0.1, 99.9)  # a feature outside the training frames' [0.1%, 99.9%] range, widened by
MARGIN = 0.1  # 10% of its width on each side, flags the frame; val's flag rate measures what that costs
ROUGHNESS_ROWS = 64


def frame_features(frame: np.ndarray, clip: tuple[float, float], pixel_size_nm: float | None) -> list[float]:
    """Raw-frame statistics: log10 of the clip span (dose, gain, pixel type), mean and std of the clipped
    intensities in [0, 1] (coverage, contrast), mean step between neighbouring pixels in those units
    (noise, focus, magnification), log2 of the frame side in pixels, log10 of the pixel size (nan unknown)."""
    sample = np.asarray(frame).reshape(-1)[:: _stride(frame.size)].astype(np.float32)
    lo, hi = percentiles(sample, clip)
    span = max(hi - lo, EPS)
    scaled = np.clip((sample - lo) / span, 0.0, 1.0)
    rows = np.asarray(frame)[:: max(1, frame.shape[0] // ROUGHNESS_ROWS)].astype(np.float32)
    steps = np.abs(np.diff(np.clip((rows - lo) / span, 0.0, 1.0), axis=1))
    return [math.log10(span), float(scaled.mean()), float(scaled.std()), float(steps.mean()),
            math.log2(math.sqrt(frame.shape[0] * frame.shape[1])),
            math.log10(pixel_size_nm) if pixel_size_nm else float("nan")]


def feature_ranges(features: np.ndarray) -> dict[str, list[float] | None]:
    """Allowed range per feature from training frames; None where training frames never had it."""
    out: dict[str, list[float] | None] = {}
    for k, name in enumerate(FEATURES):
        col = features[:, k][np.isfinite(features[:, k])] if len(features) else np.array([])
        if not col.size:
            out[name] = None
            continue
        lo, hi = np.percentile(col, QUANTILES)
        pad = MARGIN * (hi - lo) + 1e-9 * max(abs(lo), abs(hi), 1.0)  # a constant feature: equal values only
        out[name] = [float(lo - pad), float(hi + pad)]
    return out


def out_of_range(features: list[float], ranges: dict[str, list[float] | None]) -> list[str]:
    """Names of the features outside the training range (an unknown value is not judged)."""
    bad = []
    for name, value in zip(FEATURES, features, strict=True):
        rng = ranges.get(name)
        if rng is not None and math.isfinite(value) and not rng[0] <= value <= rng[1]:
            bad.append(name)
    return bad


def build_reference(train: np.ndarray, val: np.ndarray, val_scores: np.ndarray) -> dict[str, Any]:
    """What `drift_reference.json` holds: feature ranges, val's flag rate under them, val's scores."""
    ranges = feature_ranges(train)
    flags = [bool(out_of_range(list(f), ranges)) for f in val]
    return {
        "version": 1, "features": list(FEATURES), "ranges": ranges,
        "rule": f"a frame is flagged when a feature lies outside the training frames' {QUANTILES[0]}-{QUANTILES[1]}% "
                f"range widened by {MARGIN:g} of its width on each side",
        "train_frames": int(len(train)), "val_frames": int(len(val)),
        "val_flag_rate": float(np.mean(flags)) if flags else 0.0,
        "val_scores": [round(float(p), 7) for p in val_scores],
    }


def describe_export(card: dict[str, Any], folder: Path, meta: list[dict], train_rows: np.ndarray, val_rows: np.ndarray,
                    val_scores: np.ndarray, signal: str, pixel_size_nm: float) -> None:
    """Write the drift reference into an export folder and record in its card what a user of the export
    needs: the signal picked, the physical scale and the training frames' pixel sizes. val_rows are the
    calibration frames (the val split, or every train+val frame under cross-validation) in the order of
    val_scores."""
    feats = np.array([m["features"] for m in meta], dtype=np.float64).reshape(len(meta), len(FEATURES))
    reference = build_reference(feats[train_rows], feats[val_rows], val_scores)
    (folder / REFERENCE_FILE).write_text(json.dumps(reference, indent=1) + "\n")
    sizes = np.array([m["pixel_size_nm"] for m in meta if m.get("pixel_size_nm")], dtype=np.float64)
    card["input"]["signal"] = signal or "auto (named HAADF, else the only image)"
    card["input"]["pixel_size_nm"] = pixel_size_nm or None
    card["pixel_sizes_nm"] = {"known": int(sizes.size), "unknown": int(len(meta) - sizes.size),
                              **({"min": float(sizes.min()), "median": float(np.median(sizes)), "max": float(sizes.max())}
                                 if sizes.size else {})}
    card["drift"] = {"reference": REFERENCE_FILE, "val_flag_rate": reference["val_flag_rate"]}


def load_reference(export: Path) -> dict[str, Any] | None:
    path = Path(export) / REFERENCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class SessionMonitor:
    """A window of the session's latest decisions against validation; says once when it moved away."""

    def __init__(self, reference: dict[str, Any] | None, threshold: float, *, window: int = 200,
                 min_frames: int = 50, alpha: float = 1e-4):
        self.val = np.sort(np.asarray((reference or {}).get("val_scores", []), dtype=np.float64))
        self.val_rate = float(np.mean(self.val >= threshold)) if self.val.size else 0.0
        self.val_flag_rate = float((reference or {}).get("val_flag_rate", 0.0))
        self.threshold, self.min_frames, self.alpha = threshold, min_frames, alpha
        self.scores: deque[float] = deque(maxlen=window)
        self.flags: deque[bool] = deque(maxlen=window)
        self.warned = False

    def add(self, probability: float, flagged: bool) -> str | None:
        """Record one decision; the first time the window differs from validation, return why."""
        self.scores.append(float(probability))
        self.flags.append(bool(flagged))
        if self.warned or not self.val.size or len(self.scores) < self.min_frames:
            return None
        reason = self.check()
        if reason:
            self.warned = True
        return reason

    def check(self) -> str:
        n, m = len(self.scores), self.val.size
        scores = np.sort(np.fromiter(self.scores, np.float64, n))
        grid = np.concatenate([scores, self.val])
        d = float(np.max(np.abs(np.searchsorted(scores, grid, "right") / n - np.searchsorted(self.val, grid, "right") / m)))
        d_crit = math.sqrt(-0.5 * math.log(self.alpha / 2)) * math.sqrt((n + m) / (n * m))
        if d > d_crit:
            return (f"score distribution of the last {n} frames differs from validation's (KS D = {d:.3f} > {d_crit:.3f}, "
                    f"alpha {self.alpha:g}; median {np.median(scores):.3f} vs {np.median(self.val):.3f})")
        rate = float(np.mean(scores >= self.threshold))
        if _differs(rate, n, self.val_rate, m, self.alpha):
            return (f"positive rate of the last {n} frames is {rate:.3f}; validation's was {self.val_rate:.3f} at "
                    f"threshold {self.threshold:.4g} (two-proportion test, alpha {self.alpha:g})")
        flag_rate = float(np.mean(self.flags))
        if flag_rate > self.val_flag_rate and _differs(flag_rate, n, self.val_flag_rate, m, self.alpha):
            return (f"{flag_rate:.0%} of the last {n} frames look unlike the training frames; {self.val_flag_rate:.0%} "
                    "of validation frames did")
        return ""


def _differs(p1: float, n1: int, p2: float, n2: int, alpha: float) -> bool:
    """Two-sided two-proportion z-test with a pooled rate."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) / se > NormalDist().inv_cdf(1 - alpha / 2)
