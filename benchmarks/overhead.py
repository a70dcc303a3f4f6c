"""What `nas` costs on top of training, and memory over a long search.

1. One trial through `nas search` (data from the cache, best-epoch tracking, epoch checkpoints, TensorBoard,
   exact objective with bootstrap interval, latency measurement) vs a bare `model.fit` of the same fixed
   architecture on the same frames held in memory, with validation each epoch; and vs `model.fit` over the
   tf.data pipeline (nas.data.make_dataset) that trials used before nas.training. Interleaved, best of each.
2. Resident memory over 50 tiny trials, in one process and with workers recycled every 10 trials.
Usage: python benchmarks/overhead.py [--epochs 5] [--trials 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, experiment, nas

from nas.runlog import read_events

FIXED_SPACE = """
stem: {filters: 8, kernel_size: 5, strides: 2}
blocks: {type: conv, count: 3, filters: 16, growth: 1.5, kernel_size: 3, normalization: batch, pooling: max, dropout: 0.1}
head: {pooling: avg, dense: 32, dropout: 0.2}
optimizer: {name: adam, learning_rate: 0.003}
"""


def bench_experiment(path: Path, data: Path, space: Path, recycle: int = 0, **budget) -> Path:
    return experiment(path, data, space=space.resolve(), search={"recycle_every": recycle}, budget=budget,
                      training={"class_weight": "none"})


def nas_trial_seconds(exp: Path, results: Path, run_id: str) -> float:
    nas("search", exp, "--results", results, "--run-id", run_id)
    done = [e for e in read_events(results / "bench" / run_id / "trials.jsonl") if e["event"] == "trial_finished"]
    return done[0]["seconds"]


def bare_fit_seconds(run: Path, epochs: int, feed: str = "arrays") -> float:
    """The same architecture and frames, fitted the plain way: model.fit, nothing else; fed from arrays in
    memory, or (feed="tfdata") through make_dataset's tf.data pipeline."""
    import keras

    from nas.cache import FrameStore
    from nas.data import make_dataset
    from nas.models import build_model
    from nas.space import load_space
    from nas.splits import read_split

    records, splits = read_split(run / "split.csv", "positive")
    store = next((run.parent.parent / ".cache").glob("*/frames.npy"))
    frames = np.asarray(FrameStore(store))[..., None]
    labels = np.array([r.label for r in records], np.float32)
    split = np.array(splits)
    tr, va = split == "train", split == "val"
    space = load_space(run / "search_space.yaml")
    values = {k: d.constant for k, d in space.dimensions.items()}
    t0 = time.perf_counter()
    keras.backend.clear_session()
    model = build_model(values, 64, 0.9)
    if feed == "tfdata":
        flat = frames[..., 0]
        train = make_dataset(flat, labels, np.flatnonzero(tr), 32, shuffle=True)
        model.fit(train, validation_data=make_dataset(flat, labels, np.flatnonzero(va), 32, shuffle=False), epochs=epochs, verbose=0)
    else:
        model.fit(frames[tr], labels[tr], validation_data=(frames[va], labels[va]), epochs=epochs, batch_size=32, verbose=0)
    return time.perf_counter() - t0


def rss_over_trials(exp: Path, results: Path, run_id: str) -> list[float]:
    nas("search", exp, "--results", results, "--run-id", run_id)
    done = [e for e in read_events(results / "bench" / run_id / "trials.jsonl") if e["event"] == "trial_finished"]
    return [e["rss_mb"] for e in done]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nas("demo-data", tmp / "data", "--n", 600, "--size", 96, "--seed", 3)
        fixed = tmp / "fixed.yaml"
        fixed.write_text(FIXED_SPACE)
        exp = bench_experiment(tmp / "one.toml", tmp / "data", fixed, max_trials=1, epochs=args.epochs)
        ours, bare, tfdata = [], [], []
        for k in range(args.repeats):
            ours.append(nas_trial_seconds(exp, tmp / "results", f"one{k}"))
            bare.append(bare_fit_seconds(tmp / "results" / "bench" / f"one{k}", args.epochs))
            tfdata.append(bare_fit_seconds(tmp / "results" / "bench" / f"one{k}", args.epochs, feed="tfdata"))
        nas("demo-data", tmp / "tiny", "--n", 60, "--size", 48, "--seed", 3, "--groups", 5)
        small = REPO / "search_spaces" / "small_cnn.yaml"
        many = bench_experiment(tmp / "many.toml", tmp / "tiny", small, max_trials=args.trials, epochs=1)
        inproc = rss_over_trials(many, tmp / "results", "inproc")
        recycled_exp = bench_experiment(tmp / "rec.toml", tmp / "tiny", small, max_trials=args.trials, epochs=1, recycle=10)
        recycled = rss_over_trials(recycled_exp, tmp / "results", "recycled")
    ratio = min(ours) / min(bare)
    growth_in = inproc[-1] - inproc[0]
    growth_rec = max(recycled) - recycled[0]
    print(f"one trial of {args.epochs} epochs on 420 frames at 64 px: nas {min(ours):.2f} s vs bare model.fit {min(bare):.2f} s "
          f"-> {ratio:.3f}x  (all runs: nas {', '.join(f'{x:.2f}' for x in ours)}; bare {', '.join(f'{x:.2f}' for x in bare)})")
    print(f"model.fit over the tf.data pipeline: {min(tfdata):.2f} s -> nas trial / that {min(ours) / min(tfdata):.3f}x")
    print(f"RSS over {args.trials} tiny trials, one process: {inproc[0]:.0f} -> {inproc[-1]:.0f} MB (+{growth_in:.0f} MB)")
    print(f"RSS over {args.trials} tiny trials, workers recycled every 10: {recycled[0]:.0f} -> max {max(recycled):.0f} MB "
          f"(+{growth_rec:.0f} MB)")
    print(json.dumps({"trial_vs_bare_fit": round(ratio, 3), "trial_vs_tfdata_fit": round(min(ours) / min(tfdata), 3),
                      "rss_growth_mb_50_trials": round(growth_rec, 1),
                      "rss_growth_mb_50_trials_one_process": round(growth_in, 1)}))


if __name__ == "__main__":
    main()
