"""Arithmetic precision of training: float32, or Keras's mixed_bfloat16 policy (bfloat16 compute, float32
weights) where the processor has native bfloat16 units and a short probe shows it faster.

Measured here (Sapphire Rapids, AVX512_BF16): a 5-block batch-norm CNN trained at 64 px ran 4.63 s an
epoch in float32 and 3.74 s in mixed_bfloat16 (1.24x); benchmarks/overhead.py measures it again. On a
processor without bfloat16 units the same policy is emulated and slower, hence the probe.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

FLOAT32, MIXED = "float32", "mixed_bfloat16"
PROBE_FILE = "precision.json"
MIN_SPEEDUP = 1.05  # bf16 must win by more than the probe's noise


def _cpuinfo() -> str:
    """Linux's /proc/cpuinfo ('' elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def native_bf16() -> bool:
    """Whether this machine has bfloat16 arithmetic units: x86 AVX512_BF16 or AMX, or a GPU of compute
    capability 8.0 or more."""
    if any(f in _cpuinfo() for f in (" avx512_bf16", " amx_bf16")):
        return True
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        major = (tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0))[0]
        if major >= 8:
            return True
    return False


def machine() -> dict:
    """The processor a search ran on, logged with every search start and named in the model card: times
    and trial counts move with it (the recommended trial took 470-560 s on 2 Sapphire Rapids cores, 1,898 s
    on 2 cores of an AMD EPYC without AVX-512)."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
    cpu = names[0] if names else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": cores}


def epoch_seconds(policy: str, image_size: int = 64, steps: int = 12, batch: int = 32) -> float:
    """Seconds per training step of a small batch-norm CNN under a policy (after one warm-up step)."""
    import keras
    import numpy as np

    from nas.models import build_model, fresh_session

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        values = {"stem.filters": 0, "blocks.type": "conv", "blocks.count": 3, "blocks.filters": 16, "blocks.growth": 2.0,
                  "blocks.kernel_size": 3, "blocks.normalization": "batch", "blocks.activation": "relu",
                  "blocks.pooling": "max", "blocks.dropout": 0.0, "head.pooling": "avg", "head.dense": 0,
                  "head.dropout": 0.0, "optimizer.name": "adam", "optimizer.learning_rate": 1e-3,
                  "optimizer.weight_decay": 0.0}
        model = build_model(values, image_size, 0.9)
        rng = np.random.default_rng(0)
        x = rng.random((batch, image_size, image_size, 1), np.float32)
        y = (rng.random((batch, 1)) < 0.5).astype(np.float32)
        model.train_on_batch(x, y)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return (time.perf_counter() - t0) / steps
    finally:
        keras.mixed_precision.set_global_policy(previous)
        fresh_session()


def choose(setting: str, folder: Path | None = None, image_size: int = 64) -> dict:
    """The policy for a run: as set, or for "auto" bfloat16 where native units exist and the probe shows it
    faster. The decision is kept in folder/precision.json, so a resume or a worker does not probe again."""
    path = folder / PROBE_FILE if folder else None
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("setting") == setting:
            return saved
    if setting != "auto":
        decision = {"setting": setting, "policy": setting, "why": "set by search.precision"}
    elif not native_bf16():
        decision = {"setting": setting, "policy": FLOAT32, "why": "no native bfloat16 units on this machine"}
    else:
        f32, bf16 = epoch_seconds(FLOAT32, image_size), epoch_seconds(MIXED, image_size)
        speedup = f32 / bf16
        policy = MIXED if speedup >= MIN_SPEEDUP else FLOAT32
        decision = {"setting": setting, "policy": policy, "why": f"probe: bfloat16 {speedup:.2f}x float32 per step",
                    "probe_seconds_per_step": {FLOAT32: round(f32, 5), MIXED: round(bf16, 5)}}
    if path is not None:
        from nas.runlog import atomic_write_json

        atomic_write_json(path, decision)
    return decision


def apply(policy: str) -> None:
    """Set the process-wide Keras policy for the models built from now on."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
