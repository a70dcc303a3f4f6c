"""Latency of the exported SavedModel on a raw 1024x1024 uint16 frame, beside Keras model.predict.

Both paths go from the same raw frame to a probability: the SavedModel normalizes and resizes inside its
graph; the Keras path normalizes with numpy (the cache's code) and calls model.predict per call.
Usage: python benchmarks/inference.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from common import REPO, small_run

from nas.preprocess import normalize_np


def timed(fn, repeats: int) -> np.ndarray:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1000


PREDICT_RSS = """
import resource, sys
from nas.cli import main
code = main(sys.argv[1:])
print("RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
sys.exit(code)
"""


def predict_peak_rss(export: Path, folder: Path) -> float:
    """Peak RSS (MB) of a fresh `nas predict` process over every TIFF in a folder."""
    out = subprocess.run([sys.executable, "-c", PREDICT_RSS, "predict", str(export), str(folder), "--out", str(folder / "p.csv")],
                         capture_output=True, text=True, cwd=REPO, check=True)
    return float(next(line.split()[1] for line in out.stderr.splitlines() if line.startswith("RSS_MB")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        export = small_run(Path(tmp)) / "export"
        card = json.loads((export / "model_card.json").read_text())
        size, clip = card["input"]["image_size"], tuple(card["input"]["clip_percentiles"])
        serve = tf.saved_model.load(str(export / "saved_model")).signatures["serve_uint16"]
        model = keras.saving.load_model(export / "model.keras")
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 60000, (32, 1024, 1024), dtype=np.uint16)
        one = frames[:1]

        sm_1 = timed(lambda: serve(frames=tf.constant(one))["probability"].numpy(), args.repeats)
        kp_1 = timed(lambda: model.predict(normalize_np(one[0], size, clip)[None, ..., None], verbose=0), args.repeats)
        batches = max(3, args.repeats // 10)
        sm_32 = timed(lambda: serve(frames=tf.constant(frames))["probability"].numpy(), batches)
        kp_32 = timed(lambda: model.predict(np.stack([normalize_np(f, size, clip) for f in frames])[..., None], verbose=0), batches)

        rss = {}
        for count in (1_000, 10_000):  # memory of `nas predict` must not grow with the number of frames
            folder = Path(tmp) / f"frames{count}"
            folder.mkdir()
            for i in range(count):
                tifffile.imwrite(folder / f"{i:05d}.tif", rng.integers(0, 60000, (64, 64), dtype=np.uint16))
            rss[count] = predict_peak_rss(export, folder)

    p50, p95 = np.percentile(sm_1, 50), np.percentile(sm_1, 95)
    kp50 = np.percentile(kp_1, 50)
    ips_sm, ips_kp = 32 / (np.median(sm_32) / 1000), 32 / (np.median(kp_32) / 1000)
    print(f"raw 1024x1024 uint16 frame -> probability ({size} px model), {args.repeats} calls at batch 1")
    print(f"{'path':<34}{'p50 ms':>10}{'p95 ms':>10}{'img/s @32':>12}")
    print(f"{'SavedModel serve_uint16':<34}{p50:>10.2f}{p95:>10.2f}{ips_sm:>12.1f}")
    print(f"{'numpy normalize + model.predict':<34}{kp50:>10.2f}{np.percentile(kp_1, 95):>10.2f}{ips_kp:>12.1f}")
    print(f"ratio SavedModel / model.predict at p50: {p50 / kp50:.3f}; throughput ratio at batch 32: {ips_sm / ips_kp:.2f}x")
    print(f"nas predict peak RSS: {rss[1_000]:.0f} MB for 1,000 frames, {rss[10_000]:.0f} MB for 10,000 "
          f"(ratio {rss[10_000] / rss[1_000]:.3f})")
    print(json.dumps({"savedmodel_p50_ms_1024": round(p50, 3), "savedmodel_p95_ms_1024": round(p95, 3),
                      "savedmodel_vs_predict_p50": round(p50 / kp50, 3), "images_per_s_batch32": round(ips_sm, 1),
                      "predict_rss_10k_vs_1k": round(rss[10_000] / rss[1_000], 3)}))


if __name__ == "__main__":
    main()
