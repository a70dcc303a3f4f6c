"""Quality against what users run today, in the same wall-clock budget (issue 9).

Makes demo data (its own seed; --family NAME for one of the demo-data families) or takes any labelled folder
(--data DIR: labels.csv with path,label[,group], or positive/ and negative/ folders; frames of any size), makes
one split (grouped when labels.csv has a group column), and runs one after another with the same budget:
  autokeras   vanilla AutoKeras AutoModel: ImageInput -> ImageBlock(block_type="vanilla") -> ClassificationHead,
              AutoKeras's default objective (val_loss) and greedy tuner. The vanilla block is AutoKeras's own
              first pick for images and its one offline-safe family (ResNet/Xception/EfficientNet search
              `pretrained`, which downloads weights).
  kerastuner  KerasTuner RandomSearch over a typical small CNN (conv+pool blocks, flatten, dense) with
              val_accuracy, as in KerasTuner's tutorials.
  nas         nas search experiments/haadf.toml, then nas export (and, as an extra row, nas export --ensemble 3).
Each is scored on the same test split with a threshold chosen on validation data for recall >= 0.90.
The anchors get frames normalized as nas normalizes them, loaded before their clock starts; nas's clock
(budget.time_budget) starts after it has read the frames. The table reports each one's whole wall time.
Finished approaches are kept (OUT/<data>/<approach>/result.json) and reused by a re-run; --fresh redoes them.

    python benchmarks/anchors.py                        # 2,000 frames of 128 px, seed 7, 15 minutes each
    python benchmarks/anchors.py --seed 8 --only nas    # one approach
    python benchmarks/anchors.py --family sessions      # the `sessions` demo-data family
    python benchmarks/anchors.py --data /path/to/frames # your own labelled frames
Prints a Markdown table, the differences, and as its last line a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, nas

APPROACHES = ("autokeras", "kerastuner", "nas")
FLOOR = 0.9
ENSEMBLE = 3  # nas's extra row: the mean of its top 3 trials


class Deadline:
    """A Keras callback (built lazily: keras is imported in the anchor process only) that ends the search at
    the deadline: it stops the running fit and caps the oracle at the trials it has, as a user's Ctrl-C would
    but keeping the tool's own best-model bookkeeping."""

    def __new__(cls, deadline: float, oracle):
        import keras

        class _Deadline(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if time.time() >= deadline:
                    self.model.stop_training = True
                    oracle().max_trials = len(oracle().trials)

        return _Deadline()


def run_autokeras(x, y, splits, budget: float, seed: int, workdir: Path):
    import autokeras as ak

    inputs = ak.ImageInput()
    outputs = ak.ClassificationHead()(ak.ImageBlock(block_type="vanilla")(inputs))
    model = ak.AutoModel(inputs=inputs, outputs=outputs, max_trials=10_000, directory=str(workdir),
                         project_name="autokeras", overwrite=True, seed=seed)
    tr, va = splits == "train", splits == "val"
    deadline = time.time() + budget
    model.fit(x[tr], y[tr], validation_data=(x[va], y[va]), epochs=20, verbose=2,
              callbacks=[Deadline(deadline, lambda: model.tuner.oracle)])
    return model.export_model(), model.tuner.oracle


def run_kerastuner(x, y, splits, budget: float, seed: int, workdir: Path):
    import keras
    import keras_tuner

    size = x.shape[1]

    def build(hp):
        model = keras.Sequential([keras.Input((size, size, 1))])
        for i in range(hp.Int("conv_blocks", 2, 4)):
            model.add(keras.layers.Conv2D(hp.Choice(f"filters_{i}", [16, 32, 64]), 3, padding="same", activation="relu"))
            model.add(keras.layers.MaxPooling2D())
        model.add(keras.layers.Flatten())
        model.add(keras.layers.Dense(hp.Choice("units", [32, 64, 128]), activation="relu"))
        model.add(keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5, step=0.1)))
        model.add(keras.layers.Dense(1, activation="sigmoid"))
        model.compile(keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
                      loss="binary_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(build, objective="val_accuracy", max_trials=10_000, seed=seed,
                                     directory=str(workdir), project_name="kerastuner", overwrite=True)
    tr, va = splits == "train", splits == "val"
    deadline = time.time() + budget
    tuner.search(x[tr], y[tr], validation_data=(x[va], y[va]), epochs=10, batch_size=32, verbose=2,
                 callbacks=[Deadline(deadline, lambda: tuner.oracle)])
    return tuner.get_best_models(1)[0], tuner.oracle


def anchor_process(name: str, frames: Path, budget: float, seed: int, workdir: Path) -> None:
    """One anchor, in a process of its own: search, then probabilities for val and test."""
    import keras

    keras.utils.set_random_seed(seed)
    saved = np.load(frames)
    x, y, splits = saved["x"][..., None], saved["y"], saved["splits"]
    runner = run_autokeras if name == "autokeras" else run_kerastuner
    model, oracle = runner(x, y, splits, budget, seed, workdir)
    probs = {}
    for split in ("val", "test"):
        p = np.asarray(model.predict(x[splits == split], verbose=0))
        probs[split] = p[:, -1] if p.ndim == 2 else p.ravel()  # P(positive) whether 1 or 2 output columns
    trials = sum(t.status == "COMPLETED" for t in oracle.trials.values())
    np.savez(workdir / "probs.npz", **probs)
    (workdir / "info.json").write_text(json.dumps({"trials": int(trials), "params": int(model.count_params())}))


def score(y_val, p_val, y_test, p_test, confidence: float) -> dict:
    """Threshold from validation by the rule the experiment gives nas (recall >= FLOOR, at the experiment's
    objective.recall_confidence), then the test figures at that threshold."""
    from nas.objective import classification_report, precision_at_recall

    op = precision_at_recall(y_val, p_val, FLOOR, confidence)
    test = classification_report(y_test, p_test, op.threshold, FLOOR)
    return {"val_precision_at_recall": op.precision, "threshold": op.threshold, "test": test}


def fingerprint(records, data: Path) -> str:
    """Which frames, labels and groups, and each file's size and mtime: kept results are reused only for these."""
    h = hashlib.sha256()
    for r in records:
        st = (data / r.path).stat()
        h.update(f"{r.path}\t{r.label}\t{r.group}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def make_frames(data: Path, exp, size: int, out: Path) -> str:
    """Every frame normalized as nas does (nas.preprocess), with the split nas makes from the experiment.
    Reuses OUT if it holds the same frames; returns the data's fingerprint."""
    from nas import data as data_mod
    from nas import frames as frames_mod
    from nas import splits as splits_mod
    from nas.preprocess import normalize_np

    d = exp.data
    records = data_mod.scan(data, d.positive, d.negative)
    key = fingerprint(records, data)
    if out.is_file() and str(np.load(out).get("fingerprint", "")) == key:
        return key
    splits = splits_mod.make_split(records, tuple(d.split), d.seed)
    clip = tuple(d.clip_percentiles)
    x = np.stack([normalize_np(frames_mod.read_frame(data / r.path), size, clip) for r in records])
    y = np.array([r.label for r in records], dtype=np.float32)
    np.savez(out, x=x, y=y, splits=np.array(splits), paths=np.array([r.path for r in records]), fingerprint=key)
    return key


def smallest_side(data: Path, exp) -> int:
    """The smaller side of the data's first frame: the anchors never upsample frames."""
    from nas import data as data_mod
    from nas import frames as frames_mod

    first = data_mod.scan(data, exp.data.positive, exp.data.negative)[0]
    return int(min(frames_mod.read_frame(data / first.path).shape))


def data_source(args) -> tuple[Path, Path, str]:
    """The folder for this comparison's results, the data folder, and a line saying what the data is.
    Demo data is generated on first use."""
    if args.data:
        data = args.data.resolve()
        if not data.is_dir():
            raise SystemExit(f"--data {args.data}: not a folder (expected labels.csv, or positive/ and negative/ folders)")
        tag = hashlib.sha256(str(data).encode()).hexdigest()[:8]  # two folders of one name keep apart
        return args.out / f"data-{data.name}-{tag}", data, str(data)
    stem = f"seed{args.seed}-n{args.n}-{args.size}px"
    folder = args.out / (stem if args.family == "base" else f"{args.family}-{stem}")  # base: the folders of before
    data = folder / "data"
    if not (data / "labels.csv").is_file():
        groups = ("--groups", args.groups) if args.groups else ()
        nas("demo-data", data, "--n", args.n, "--size", args.size, "--seed", args.seed, "--family", args.family, *groups)
    return folder, data, f"{args.n} frames of {args.size} px, family {args.family}, seed {args.seed}"


def run_nas(folder: Path, data: Path, experiment: Path, budget: float) -> dict:
    from nas.runlog import read_trials
    from nas.trial import TrialStatus

    results, run = folder / "results", folder / "results" / "run"
    cmd = [sys.executable, "-m", "nas"]
    subprocess.run([*cmd, "search", str(experiment), "--data", str(data), "--results", str(results), "--run-id", "run",
                    "--time-budget", str(int(budget))], check=True)
    run = next(results.glob("*/run"))
    if '"trial_finished"' not in (run / "trials.jsonl").read_text():
        raise SystemExit(f"{run}: no trial finished within the budget; give it more time (--budget-min)")
    subprocess.run([*cmd, "export", str(run)], check=True)
    card = json.loads((run / "export" / "model_card.json").read_text())
    records = read_trials(run / "trials.jsonl").values()
    trials = sum(r.status is TrialStatus.FINISHED for r in records)
    ensemble = None
    # racing leaves trials with fewer fold models than folds: an ensemble averages only those that trained every fold
    whole = sum(r.complete for r in records)
    if whole < ENSEMBLE:
        print(f"nas: no --ensemble {ENSEMBLE} row: {whole} trial(s) trained every fold", file=sys.stderr)
    else:  # a second, separately reported model: the mean of the top trials (nas export --ensemble)
        out = run / f"export-ensemble{ENSEMBLE}"
        subprocess.run([*cmd, "export", str(run), "--ensemble", str(ENSEMBLE), "--out", str(out)], check=True)
        ens = json.loads((out / "model_card.json").read_text())
        ensemble = {"val_precision_at_recall": ens["metrics"][ens["threshold_from"]]["precision_at_floor"], "test": ens["metrics"]["test"],
                    "latency_ms": ens["latency_ms_batch1"], "members": ens["ensemble"]}
    return {"trials": trials, "params": card["params"], "run": str(run), "card": card, "ensemble": ensemble}


def check_same_split(run: Path, frames: Path, positive: str) -> None:
    """The anchors were scored on the split nas made; refuse to compare if they differ."""
    from nas import splits as splits_mod

    records, splits, _ = splits_mod.read_split(run / "split.csv", positive)
    ours = np.load(frames)
    mine = dict(zip(ours["paths"].tolist(), ours["splits"].tolist(), strict=True))
    theirs = {r.path: s for r, s in zip(records, splits, strict=True)}
    if mine != theirs:
        raise SystemExit(f"{run}/split.csv differs from the anchors' split: the comparison would be unfair")


def run_approach(name: str, folder: Path, data: Path, frames: Path, experiment: Path, budget: float, seed: int,
                 exp, key: str) -> dict:
    work = folder / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    if name == "nas":
        info = run_nas(work, data, experiment, budget)
        check_same_split(Path(info["run"]), frames, exp.data.positive)
        card = info.pop("card")
        t = card["metrics"]
        result = {"val_precision_at_recall": t[card["threshold_from"]]["precision_at_floor"], "threshold": None,
                  "test": t["test"], **info}
    else:
        subprocess.run([sys.executable, __file__, "--anchor", name, "--frames", str(frames), "--budget-s", str(budget),
                        "--seed", str(seed), "--workdir", str(work)], check=True)
        saved, probs = np.load(frames), np.load(work / "probs.npz")
        y, splits = saved["y"], saved["splits"]
        result = {**score(y[splits == "val"], probs["val"], y[splits == "test"], probs["test"],
                          exp.objective.recall_confidence),
                  **json.loads((work / "info.json").read_text())}
    result.update(approach=name, wall_s=round(time.time() - t0, 1), budget_s=budget, data_fingerprint=key)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| approach | trials | wall (min) | val precision @ recall>=0.9 | test precision | test recall | "
             "test weighted F1 | test PR-AUC |", "|---|---|---|---|---|---|---|---|"]
    rows = [(name, r, r["trials"], f"{r['wall_s'] / 60:.1f}") for name, r in results.items()]
    ens = results.get("nas", {}).get("ensemble")
    if ens:
        rows.append((f"nas, mean of top {len(ens['members'])} ({ens['latency_ms']:.1f} ms/frame)", ens, "(same run)", "+export"))
    for name, r, trials, wall in rows:
        t = r["test"]
        lines.append(f"| {name} | {trials} | {wall} | {r['val_precision_at_recall']:.3f} | "
                     f"{t['precision']:.3f} | {t['recall']:.3f} | {t['weighted_f1']:.3f} | {t['pr_auc']:.3f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="a labelled folder to compare on instead of demo data")
    source.add_argument("--family", default="base", help="demo-data family to generate (default base; see nas demo-data --help)")
    ap.add_argument("--n", type=int, default=2000, help="demo frames (default 2000)")
    ap.add_argument("--size", type=int, default=128, help="demo frame size in px (default 128)")
    ap.add_argument("--seed", type=int, default=7, help="demo-data seed (default 7)")
    ap.add_argument("--groups", type=int, help="demo sessions (default: the family's, 8 for base)")
    ap.add_argument("--budget-min", type=float, default=15.0, help="wall-clock minutes per approach (default 15)")
    ap.add_argument("--anchor-size", type=int, default=128, help="frame size the anchors train on (default 128, "
                    "capped at the frames' size): their networks have no strided stem, so larger frames only slow them")
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "haadf.toml")
    ap.add_argument("--only", default=",".join(APPROACHES), help="comma-separated subset of " + ", ".join(APPROACHES))
    ap.add_argument("--fresh", action="store_true", help="rerun approaches that have a result already")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "anchors")
    ap.add_argument("--anchor", choices=APPROACHES[:2], help=argparse.SUPPRESS)  # internal: one anchor process
    ap.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


def run_all(args, only: list[str], folder: Path, data: Path, frames: Path, key: str, exp) -> dict[str, dict]:
    """Each approach in turn, or its kept result when it ran on the same frames with the same budget."""
    budget = args.budget_min * 60
    results = {}
    for name in APPROACHES:
        kept = folder / name / "result.json"
        old = json.loads(kept.read_text()) if kept.is_file() else {}
        # results from before fingerprints were kept (demo data only) count as the same frames
        same = old.get("budget_s") == budget and old.get("data_fingerprint", key if not args.data else None) == key
        if same and (name not in only or not args.fresh):
            if name in only:
                print(f"{name}: reusing {kept}", file=sys.stderr)
            results[name] = old
        elif name in only:
            print(f"{name}: running for {args.budget_min:g} minutes", file=sys.stderr, flush=True)
            results[name] = run_approach(name, folder, data, frames, args.experiment, budget, args.seed, exp, key)
    return results


def figures(results: dict[str, dict], about: str) -> dict:
    """The JSON last line: nas's test figures, the better anchor's, and the margin; prints the differences."""
    out = {"nas_precision_at_recall": None, "nas_weighted_f1": None, "best_anchor_precision_at_recall": None,
           "margin": None, "data": about}
    anchors = [r for n, r in results.items() if n != "nas"]
    if "nas" in results:
        nas_test = results["nas"]["test"]
        out.update(nas_precision_at_recall=round(nas_test["precision"], 4), nas_weighted_f1=round(nas_test["weighted_f1"], 4))
        for r in anchors:
            t = r["test"]
            print(f"nas - {r['approach']}: test precision {nas_test['precision'] - t['precision']:+.3f}, "
                  f"weighted F1 {nas_test['weighted_f1'] - t['weighted_f1']:+.3f}, PR-AUC {nas_test['pr_auc'] - t['pr_auc']:+.3f}")
    if anchors:
        best = max(r["test"]["precision"] for r in anchors)
        out["best_anchor_precision_at_recall"] = round(best, 4)
        if out["nas_precision_at_recall"] is not None:
            out["margin"] = round(out["nas_precision_at_recall"] - best, 4)
    return out


def main() -> None:
    args = parse_args()
    if args.anchor:
        anchor_process(args.anchor, args.frames, args.budget_s, args.seed, args.workdir)
        return
    only = [a for a in args.only.split(",") if a]
    unknown = set(only) - set(APPROACHES)
    if unknown:
        raise SystemExit(f"--only: unknown approach(es) {', '.join(sorted(unknown))}; expected {', '.join(APPROACHES)}")

    from nas.config import load_experiment
    from nas.errors import NasError

    try:
        exp = load_experiment(args.experiment)
        folder, data, about = data_source(args)
        anchor_size = min(args.anchor_size, smallest_side(data, exp) if args.data else args.size)
        folder.mkdir(parents=True, exist_ok=True)
        frames = folder / f"frames-{anchor_size}px.npz"
        key = make_frames(data, exp, anchor_size, frames)
    except NasError as exc:
        raise SystemExit(f"anchors: {exc}") from None
    results = run_all(args, only, folder, data, frames, key, exp)
    print(f"\n{folder.name}: {about} (anchors at {anchor_size} px), "
          f"{args.budget_min:g} minutes each, test figures at the val threshold for recall >= {FLOOR}\n")
    print(table(results))
    print(json.dumps(figures(results, about)))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
