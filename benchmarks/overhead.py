"""What `nas` costs on top of training, where a trial's time goes, memory over a long search, and bf16.

1. One tiny trial (5 epochs, 420 frames, 64 px) and one of the recommended experiment's shape (40 epochs,
   ~1,400 frames, 64 px, experiments/haadf.toml's warm-start architecture and cosine schedule) through
   `nas search`, against a bare `model.fit` of the same architecture on the same frames held in memory,
   with validation each epoch; interleaved, best of --repeats. Both sides train in float32 without
   augmentation, so the ratio is what nas adds: the data feed from the cache, best-epoch tracking, epoch
   checkpoints, TensorBoard, the exact objective with its interval, latency measurement, releasing the model.
   The nas side is the trial's `seconds` (its session reset to its record) plus its wait for the oracle; the
   trial's own breakdown (its `timing` record) is printed.
2. Resident memory over 50 tiny trials, in one process and with workers recycled every 10 trials (and on
   memory growth, search.recycle_memory_mb): each trial's rss_mb, read after its model was released.
3. bf16: one epoch of the recommended shape under float32 and under mixed_bfloat16, same model and frames.
Usage: python benchmarks/overhead.py [--repeats 2] [--trials 50] [--quick] [--memory-only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, experiment, nas

from nas.runlog import read_events, read_trials

FIXED_SPACE = """
stem: {filters: 8, kernel_size: 5, strides: 2}
blocks: {type: conv, count: 3, filters: 16, growth: 1.5, kernel_size: 3, normalization: batch, pooling: max, dropout: 0.1}
head: {pooling: avg, dense: 32, dropout: 0.2}
optimizer: {name: adam, learning_rate: 0.003}
"""
RECOMMENDED_SPACE = """
blocks: {type: conv, count: 4, filters: 16, growth: 2.0, kernel_size: 3, normalization: batch, pooling: max, dropout: 0.0}
head: {pooling: avg, dense: 0, dropout: 0.2}
optimizer: {name: adam, learning_rate: 0.003, schedule: cosine}
"""


def bench_experiment(path: Path, data: Path, space: Path, recycle: int = 0, **budget) -> Path:
    return experiment(path, data, space=space.resolve(), search={"recycle_every": recycle}, budget=budget,
                      training={"class_weight": "none"})


def nas_trial(exp: Path, results: Path, run_id: str):
    nas("search", exp, "--results", results, "--run-id", run_id)
    return read_trials(results / "bench" / run_id / "trials.jsonl")["0"]


def bare_fit_seconds(run: Path, epochs: int, batch: int = 32) -> float:
    """The same architecture and frames, fitted the plain way: model.fit on arrays in memory, nothing else."""
    from nas.cache import FrameStore
    from nas.models import build_model, fresh_session
    from nas.space import load_space
    from nas.splits import read_split
    from nas.training import steps_per_epoch

    records, splits, _ = read_split(run / "split.csv", "positive")
    store = Path(read_events(run / "trials.jsonl")[0]["cache"]) / "frames.npy"  # this run's cache
    frames = np.asarray(FrameStore(store))[..., None]
    labels = np.array([r.label for r in records], np.float32)
    split = np.array(splits)
    tr, va = split == "train", split == "val"
    space = load_space(run / "search_space.yaml")
    values = {k: d.constant for k, d in space.dimensions.items()}
    t0 = time.perf_counter()
    fresh_session()
    model = build_model(values, 64, 0.9, steps_per_epoch(int(tr.sum()), batch) * epochs)
    model.fit(frames[tr], labels[tr], validation_data=(frames[va], labels[va]), epochs=epochs, batch_size=batch, verbose=0)
    return time.perf_counter() - t0


def trial_against_bare(tmp: Path, name: str, data: Path, space_text: str, epochs: int, repeats: int) -> dict:
    space = tmp / f"{name}.yaml"
    space.write_text(space_text)
    exp = bench_experiment(tmp / f"{name}.toml", data, space, max_trials=1, epochs=epochs)
    ours, bare, timing = [], [], {}
    for k in range(repeats):
        rec = nas_trial(exp, tmp / "results", f"{name}{k}")
        ours.append(rec.seconds + rec.timing.get("oracle_wait", 0.0))  # the trial from its session reset, and the oracle
        timing = rec.timing if ours[-1] <= min(ours) else timing
        bare.append(bare_fit_seconds(tmp / "results" / "bench" / f"{name}{k}", epochs))
    return {"ours": ours, "bare": bare, "ratio": min(ours) / min(bare), "timing": timing}


def rss_over_trials(exp: Path, results: Path, run_id: str) -> list[float]:
    nas("search", exp, "--results", results, "--run-id", run_id)
    recs = sorted(read_trials(results / "bench" / run_id / "trials.jsonl").values(), key=lambda r: int(r.trial_id))
    return [r.rss_mb for r in recs]


def bf16_speedup(frames: int = 1400, repeats: int = 2) -> tuple[float, float, float]:
    """Seconds of one epoch (train_on_batch, batch 32) of the recommended shape in float32 and in bf16."""
    import keras

    from nas.models import build_model, fresh_session
    from nas.space import parse_space

    values = {k: d.constant for k, d in parse_space(RECOMMENDED_SPACE).dimensions.items()}
    rng = np.random.default_rng(0)
    x = rng.random((frames, 64, 64, 1), np.float32)
    y = (rng.random((frames, 1)) < 0.5).astype(np.float32)
    best = {"float32": np.inf, "mixed_bfloat16": np.inf}
    for _ in range(repeats):
        for policy in best:
            fresh_session()
            keras.mixed_precision.set_global_policy(policy)
            model = build_model(values, 64, 0.9)
            model.train_on_batch(x[:32], y[:32])
            t0 = time.perf_counter()
            for i in range(0, frames, 32):
                model.train_on_batch(x[i : i + 32], y[i : i + 32])
            best[policy] = min(best[policy], time.perf_counter() - t0)
    keras.mixed_precision.set_global_policy("float32")
    return best["float32"], best["mixed_bfloat16"], best["float32"] / best["mixed_bfloat16"]


def share(timing: dict[str, float]) -> str:
    total = sum(timing.values()) or 1.0
    return ", ".join(f"{k} {v:.2f}s ({100 * v / total:.1f}%)" for k, v in sorted(timing.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="a smaller 'recommended' trial (8 epochs), for a smoke run")
    ap.add_argument("--memory-only", action="store_true", help="only part 2, resident memory over --trials trials")
    args = ap.parse_args()
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(memory_report(*memory_over_trials(Path(tmp), args.trials))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nas("demo-data", tmp / "data", "--n", 600, "--size", 96, "--seed", 3)
        tiny = trial_against_bare(tmp, "tiny", tmp / "data", FIXED_SPACE, 5, args.repeats)
        nas("demo-data", tmp / "big", "--n", 2000, "--size", 96, "--seed", 3)
        rec = trial_against_bare(tmp, "rec", tmp / "big", RECOMMENDED_SPACE, 8 if args.quick else 40, args.repeats)
        f32, bf16, speedup = bf16_speedup()
        inproc, recycled = memory_over_trials(tmp, args.trials)
    for name, r in (("tiny: 5 epochs, 420 frames", tiny), ("recommended shape: 40 epochs, 1,400 frames", rec)):
        print(f"one trial ({name}, 64 px): nas {min(r['ours']):.2f} s vs bare model.fit {min(r['bare']):.2f} s -> "
              f"{r['ratio']:.3f}x (all runs: nas {', '.join(f'{x:.2f}' for x in r['ours'])}; bare "
              f"{', '.join(f'{x:.2f}' for x in r['bare'])})")
        print(f"  where the trial's time went: {share(r['timing'])}")
    print(f"one epoch of the recommended shape, 1,400 frames: float32 {f32:.2f} s, mixed_bfloat16 {bf16:.2f} s -> {speedup:.2f}x")
    memory = memory_report(inproc, recycled)
    print(json.dumps({"trial_vs_bare_fit": round(tiny["ratio"], 3), "trial_vs_bare_fit_recommended": round(rec["ratio"], 3),
                      "rss_growth_mb_50_trials": memory.pop("rss_growth_mb_50_trials"), "bf16_epoch_speedup": round(speedup, 3),
                      **memory, "timing_recommended": rec["timing"], "timing_tiny": tiny["timing"]}))


def memory_over_trials(tmp: Path, trials: int) -> tuple[list[float], list[float]]:
    """Each tiny trial's resident memory at its end: all in one process, and in workers recycled every 10 trials
    (or at search.recycle_memory_mb's default growth)."""
    nas("demo-data", tmp / "tiny", "--n", 60, "--size", 48, "--seed", 3, "--groups", 5)
    small = REPO / "search_spaces" / "small_cnn.yaml"
    many = bench_experiment(tmp / "many.toml", tmp / "tiny", small, max_trials=trials, epochs=1)
    inproc = rss_over_trials(many, tmp / "results", "inproc")
    recycled_exp = bench_experiment(tmp / "rec.toml", tmp / "tiny", small, max_trials=trials, epochs=1, recycle=10)
    return inproc, rss_over_trials(recycled_exp, tmp / "results", "recycled")


def memory_report(inproc: list[float], recycled: list[float]) -> dict:
    """Growth as the issue measures it (the highest trial against the first, with recycled workers), the same
    in one process, and as a trend (the highest of the last 10 trials against the highest of the first 10)."""
    growth_in, growth_rec = max(inproc) - inproc[0], max(recycled) - recycled[0]
    trend_in, trend_rec = (max(r[-10:]) - max(r[:10]) for r in (inproc, recycled))
    for name, r, growth, trend in (("one process", inproc, growth_in, trend_in),
                                   ("workers recycled every 10 or at +64 MB", recycled, growth_rec, trend_rec)):
        print(f"RSS over {len(r)} tiny trials, {name}: first {r[0]:.0f} MB, highest {max(r):.0f} MB (+{growth:.0f} MB), "
              f"last {r[-1]:.0f} MB; highest of the last 10 trials vs of the first 10: {trend:+.0f} MB")
        print("  each trial's RSS (MB): " + " ".join(f"{x:.0f}" for x in r))
    return {"rss_growth_mb_50_trials": round(growth_rec, 1), "rss_growth_mb_50_trials_one_process": round(growth_in, 1),
            "rss_trend_mb_last10_vs_first10": round(trend_rec, 1), "rss_trend_mb_last10_vs_first10_one_process": round(trend_in, 1)}


if __name__ == "__main__":
    main()
