"""What a model costs on this machine: its latency per frame at batch 1, and this process's memory.
Used by the search (constraints, the trial record) and by export (an ensemble's latency)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

_measured: dict[str, float] = {}  # architecture fingerprint -> ms; training does not change the latency


def current_rss_mb() -> float:
    """This process's resident memory now (Linux /proc; peak RSS elsewhere), for the per-trial record."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure_latency_ms(model, image_size: int, repeats: int = 20) -> float:
    """Median wall time of one forward pass at batch 1 on this machine, in milliseconds."""
    import tensorflow as tf

    x = np.zeros((1, image_size, image_size, 1), np.float32)
    fn = tf.function(lambda v: model(v, training=False), reduce_retracing=True)
    for _ in range(3):
        fn(x).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def latency_once_ms(model, image_size: int) -> float:
    """The latency of this architecture, measured the first time it is seen in this process: trials that
    share an architecture (folds, repeated proposals) share one measurement."""
    key = hashlib.sha256(f"{image_size}|{model.to_json()}".encode()).hexdigest()
    if key not in _measured:
        _measured[key] = measure_latency_ms(model, image_size)
    return _measured[key]
