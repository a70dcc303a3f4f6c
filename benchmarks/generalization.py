"""Leave-one-family-out generalization (issue 15): the recommended experiment on each demo-data family.

For each family: generate its data (--n frames of --size px; seed = --seed + the family's place in the
catalog, so every family has its own), run `nas search EXPERIMENT --data DIR` for --budget-min minutes,
`nas export` the best trial, and read the model card: the search's own val estimate of the objective with its
95% interval, and the test split's precision, recall, weighted F1 and PR-AUC at the val threshold.
  honest     the 95% interval the export predicted for the test precision (the card's expected_on_test,
             from the validation or out-of-fold probabilities, stated before the test split was read)
             contains it
  recall ok  test recall >= the recall floor minus --slack
  new sessions  the export on --new-sessions K sessions of the family drawn afresh (another seed, 250 frames
             each; the same K sessions whatever run is judged): pooled precision, recall, weighted F1 and
             PR-AUC at the exported threshold, and how many of the K sessions keep the recall floor. A test
             split of 1-2 sessions is one draw of what a new session does; K sessions show the spread.
Families named by --held-out are summarised apart from the others: choose settings on the others, report on
these. Each family's result is kept (OUT/<family>-seed<S>-n<N>-<PX>px/result.json) and reused when its data,
the experiment file, the budget and the --set values are the same; --fresh reruns it. The searches' own
output goes to standard error; standard output carries the table and, as its last line, a JSON object.

    python benchmarks/generalization.py                                    # every family, 15 minutes each
    python benchmarks/generalization.py --families base,rare --held-out rare --budget-min 5
    python benchmarks/generalization.py --set search.tuner=random --out results/generalization-random
    python benchmarks/generalization.py --families magnification --groups 16 --out results/sessions16
    python benchmarks/generalization.py --families magnification --positive-rate 0.25 --rate-spread 0.6 --out results/dev-W
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from common import REPO, called_by_kind, nas

from nas.synthetic import FAMILIES

NEW_SESSION_FRAMES = 250  # frames of each freshly drawn session (a family's own sessions hold 2000 / 8)
NEW_SESSION_SEED = 1000  # fresh sessions of a family use its seed + this: never a searched family's seed


def read_card(run: Path) -> dict:
    """The figures this benchmark reports, from the export's model card; the one place that knows its layout.
    The val estimate and its interval are the winning trial's objective and objective_ci95 (the search's own
    figures, from the card if it carries them, else from the trial's record in the log); failing both, the
    card's val precision and its bootstrap interval at the chosen threshold."""
    card = json.loads((run / "export" / "model_card.json").read_text())
    val, test = card["metrics"][card.get("threshold_from", "val")], card["metrics"]["test"]
    trial, finished = _trial_log(run / "trials.jsonl", str(card["trial_id"]))
    searched = card.get("search_estimate") or {}
    estimate = searched.get("objective", trial.get("objective"))
    # the interval a test figure is judged against: the card's prediction for a split like the test split
    # (stated before the test split was read), else the trial's own interval
    interval = (card.get("expected_on_test") or {}).get("precision") or searched.get("ci95") or trial.get("objective_ci95")
    source = "trial objective"
    if estimate is None or not interval:
        estimate, interval, source = val["precision"], val.get("precision_95ci"), "val precision at the threshold"
    return {
        "trial_id": card["trial_id"], "trials": finished, "recall_floor": card["recall_floor"],
        "threshold": card["threshold"], "val_estimate": estimate, "val_ci95": interval, "val_estimate_is": source,
        "test_precision": test["precision"], "test_recall": test["recall"], "test_weighted_f1": test["weighted_f1"],
        "test_pr_auc": test["pr_auc"], "test_n": test["n"], "test_positives": test["positives"],
        "threshold_note": card.get("threshold_note"), "val_split": card.get("threshold_from", "val"),
        "expected_test_precision_95": (card.get("expected_on_test") or {}).get("precision"),
        "expected_test_recall_95": (card.get("expected_on_test") or {}).get("recall"),
        "test_sessions": _test_sessions(run),
    }


def _test_sessions(run: Path) -> int | None:
    """Sessions (groups) in the run's test split, read as the project reads split.csv; None when frames have no group."""
    from nas.splits import read_split

    records, splits, _ = read_split(run / "split.csv", positive="")  # labels do not matter here
    groups = {r.group for r, split in zip(records, splits, strict=True) if split == "test" and r.group}
    return len(groups) or None


def _trial_log(log: Path, trial_id: str) -> tuple[dict, int]:
    """The winning trial's trial_finished event, and how many trials finished (not counting one the budget
    interrupted). The log is JSON lines; a torn last line is skipped."""
    found, finished = {}, 0
    for line in log.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "trial_finished":
            finished += 1
            found = ev if str(ev.get("trial_id")) == trial_id else found
    return found, finished


def judge(fig: dict, slack: float) -> dict:
    """Is the val estimate honest about the test precision, and does test recall keep the floor (less slack)?"""
    lo, hi = fig["val_ci95"] or (None, None)
    honest = None if lo is None else bool(lo <= fig["test_precision"] <= hi)
    return {**fig, "honest": honest, "recall_ok": bool(fig["test_recall"] >= fig["recall_floor"] - slack)}


def same_settings(kept: dict, now: dict) -> bool:
    """Whether a kept result was made with these settings. The experiment is compared by its content
    (experiment_sha256), not by where the file lies: the same file in another checkout or worktree is the
    same experiment (a search run from a worktree was otherwise redone, and its run replaced, from main)."""
    def key(s: dict) -> dict:
        return {k: v for k, v in s.items() if k != "experiment"}
    return key(kept or {}) == key(now)


def settings(args, name: str) -> dict:
    """What a kept result must match to be reused (same_settings), with the experiment's path for the record."""
    return {"family": name, "seed": family_seed(name, args.seed), "n": args.n, "size": args.size,
            "experiment": str(args.experiment), "experiment_sha256": experiment_digest(args.experiment),
            "space_sha256": space_digest(args),
            "budget_s": args.budget_min * 60, "set": list(args.set or []),
            **({"groups": args.groups} if args.groups else {}), **balance_settings(args)}


BALANCE = (("positive_rate", "p"), ("rate_spread", "s"))  # demo-data options that make other data: (name, folder tag)


def balance_settings(args) -> dict:
    """--positive-rate and --rate-spread where given: they make other data, so they name its folder and key."""
    return {k: getattr(args, k) for k, _ in BALANCE if getattr(args, k, None) is not None}


def data_options(args) -> tuple:
    """The demo-data options a family's data and its new sessions share."""
    return tuple(x for k, v in balance_settings(args).items() for x in (f"--{k.replace('_', '-')}", v))


def balance_suffix(args) -> str:
    """'-p0.25-s0.6' for --positive-rate 0.25 --rate-spread 0.6, '' without them: their data's folder names."""
    return "".join(f"-{tag}{getattr(args, k):g}" for k, tag in BALANCE if getattr(args, k, None) is not None)


def family_folder(name: str, args) -> Path:
    groups = f"-g{args.groups}" if args.groups else ""
    return args.out / f"{name}-seed{family_seed(name, args.seed)}-n{args.n}-{args.size}px{groups}{balance_suffix(args)}"


def new_sessions_data(name: str, args) -> Path:
    """K sessions of the family never drawn for any search (seed + NEW_SESSION_SEED), generated once."""
    seed = family_seed(name, args.seed) + NEW_SESSION_SEED
    data = args.out / f"{name}-new-sessions-seed{seed}-k{args.new_sessions}-{args.size}px{balance_suffix(args)}"
    if not (data / "labels.csv").is_file():
        nas("demo-data", data, "--n", args.new_sessions * NEW_SESSION_FRAMES, "--size", args.size, "--seed", seed,
            "--family", name, "--groups", args.new_sessions, *data_options(args))
    return data


def on_new_sessions(name: str, args, run: Path, fig: dict) -> dict:
    """The family's export on its fresh sessions, at the exported threshold; a failure is recorded with its
    reason and does not stop the other families."""
    try:
        data = new_sessions_data(name, args)
        fresh = score_new_sessions(predictions_for(run, data), data, fig["threshold"], fig["recall_floor"])
    except (SystemExit, RuntimeError, ValueError, KeyError, OSError) as exc:
        return {"error": str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}
    return {**fresh, "inside_predicted_interval": sessions_inside(fresh, fig)}


def predictions_for(run: Path, data: Path) -> Path:
    """`nas predict EXPORT DATA`, as a user runs it, once per export: the CSV is kept beside the data with the
    export's model id, and redone when the export changes (a re-export, another winner)."""
    from nas.classifier import model_id

    preds = data / f"predictions-{run.parent.parent.parent.name}.csv"
    stamp, current = preds.with_suffix(".model_id"), model_id(run / "export")
    if not preds.is_file() or not stamp.is_file() or stamp.read_text().strip() != current:
        nas("predict", run / "export", data, "--out", preds)
        stamp.write_text(current + "\n")
    return preds


def score_new_sessions(preds: Path, data: Path, threshold: float, floor: float) -> dict:
    """Pooled figures at the threshold (the card's arithmetic), each session's recall and precision, and the
    precision at the floor had the threshold been chosen on these very sessions (what the model could do,
    which no export can: it separates the model from its threshold). Rows `nas predict` could not read are
    counted and left out."""
    import numpy as np

    from nas.objective import classification_report

    truth = {(data / r["path"]).resolve(): (r["label"] == "positive", r["group"], r.get("kind") or "")
             for r in csv.DictReader(open(data / "labels.csv"))}
    rows, unreadable = [], 0
    for r in csv.DictReader(open(preds)):
        if r.get("error") or not r["probability"]:
            unreadable += 1
        else:
            rows.append((truth[Path(r["path"]).resolve()], float(r["probability"])))
    y = np.array([t[0] for t, _ in rows], dtype=int)
    groups = np.array([t[1] for t, _ in rows])
    kinds = np.array([t[2] for t, _ in rows])
    prob = np.array([p for _, p in rows])
    rep = classification_report(y, prob, threshold, floor)
    sessions = {}
    for g in np.unique(groups):
        mine, called = groups == g, prob >= threshold
        pos = int(y[mine].sum())
        sessions[str(g)] = {"positives": pos, "recall": round(float(called[mine & (y == 1)].mean()), 4) if pos else None,
                            "precision": round(float(y[mine & called].mean()), 4) if called[mine].any() else None}
    recalls = [s["recall"] for s in sessions.values() if s["recall"] is not None]
    return {"sessions": len(sessions), "n": rep["n"], "unreadable": unreadable, "positives": rep["positives"],
            "precision": round(rep["precision"], 4), "recall": round(rep["recall"], 4),
            "weighted_f1": round(rep["weighted_f1"], 4), "pr_auc": round(rep["pr_auc"], 4),
            "precision_at_floor_chosen_on_them": round(rep["precision_at_floor"], 4),
            "sessions_keeping_floor": sum(r >= floor for r in recalls), "worst_session_recall": min(recalls, default=None),
            "per_session": sessions, "called_by_kind": called_by_kind(y, kinds, prob >= threshold), "predictions": str(preds)}


def sessions_inside(fresh: dict, fig: dict) -> dict:
    """How many fresh sessions fall inside the 95% intervals the card predicted for the test split (precision,
    recall); only where the test split is one session, so that each fresh session is one more draw of it
    (with --groups the test split may hold several smaller sessions, whose interval is another)."""
    inside = {}
    if fig.get("test_sessions") != 1:
        return inside
    for figure in ("precision", "recall"):
        interval = fig.get(f"expected_test_{figure}_95")
        seen = [s[figure] for s in fresh["per_session"].values() if s[figure] is not None]
        if interval:
            inside[figure] = [sum(interval[0] <= x <= interval[1] for x in seen), len(seen)]
    return inside


def experiment_digest(path: Path) -> str:
    """What the experiment file says, not how: a comment edit must not throw away hours of kept results."""
    return hashlib.sha256(json.dumps(tomllib.loads(path.read_text()), sort_keys=True).encode()).hexdigest()


def space_digest(args) -> str:
    """What the search space means (the experiment's, or `--set search.space=...`): its fingerprint, the one
    resume checks, so a new space is a new search even where the experiment file is unchanged."""
    from nas.errors import NasError
    from nas.space import load_space

    chosen = [v.partition("=")[2] for v in args.set or [] if v.partition("=")[0] == "search.space"]
    try:
        return load_space(chosen[-1] if chosen else tomllib.loads(args.experiment.read_text())["search"]["space"]).fingerprint
    except NasError as exc:
        raise SystemExit(str(exc)) from None


def family_seed(name: str, base: int) -> int:
    return base + list(FAMILIES).index(name)


def positive_share(data: Path) -> float:
    rows = list(csv.DictReader(open(data / "labels.csv")))
    return sum(r["label"] == "positive" for r in rows) / len(rows)


def run_family(name: str, args, folder: Path) -> dict:
    """Data, search, export, figures for one family; a failure is recorded with its reason, not raised."""
    data, results, kept = folder / "data", folder / "results.partial", folder / "results"
    if not (data / "labels.csv").is_file():
        nas("demo-data", data, "--n", args.n, "--size", args.size, "--seed", family_seed(name, args.seed), "--family", name,
            *(("--groups", args.groups) if args.groups else ()), *data_options(args))
    shutil.rmtree(results, ignore_errors=True)  # a kept result's run stays in place until this one is exported
    cmd = [sys.executable, "-m", "nas"]
    sets = [x for kv in (args.set or []) for x in ("--set", kv)]
    t0 = time.time()
    try:
        _call([*cmd, "search", str(args.experiment), "--data", str(data), "--results", str(results), "--run-id", "run",
               "--time-budget", str(int(args.budget_min * 60)), *sets])
        run = next(results.glob("*/run"))
        if '"trial_finished"' not in (run / "trials.jsonl").read_text():
            raise RuntimeError("no trial finished within the budget; give it more time (--budget-min)")
        _call([*cmd, "export", str(run)])
        shutil.rmtree(kept, ignore_errors=True)
        results.rename(kept)
        fig = judge(read_card(next(kept.glob("*/run"))), args.slack)
    except (RuntimeError, StopIteration) as exc:
        fig = {"error": str(exc) or "the search wrote no run folder"}
    return {**fig, "positive_share": round(positive_share(data), 4), "wall_s": round(time.time() - t0, 1),
            "settings": settings(args, name)}


def _call(cmd: list[str]) -> None:
    """Run a nas command, its output on our standard error; raise with its last error line if it fails."""
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise RuntimeError(f"nas {cmd[3]} exited {proc.returncode}: {lines[-1] if lines else 'no message'}")


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, dict], held_out: set[str], slack: float) -> str:
    lines = ["| family | role | positive | trials | search estimate [predicted test 95% CI] | test precision | test recall | "
             f"test weighted F1 | test PR-AUC | honest | recall >= floor - {slack:g} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        role = "held out" if name in held_out else "development"
        if "error" in r:
            lines.append(f"| {name} | {role} | {r['positive_share']:.0%} | failed: {r['error']} |||||||")
            continue
        lo, hi = r["val_ci95"] or (None, None)
        lines.append(f"| {name} | {role} | {r['positive_share']:.0%} | {r['trials']} | {r['val_estimate']:.3f} "
                     f"[{_fmt(lo, '.2f')}-{_fmt(hi, '.2f')}] | {r['test_precision']:.3f} | {r['test_recall']:.3f} | "
                     f"{r['test_weighted_f1']:.3f} | {r['test_pr_auc']:.3f} | {'-' if r['honest'] is None else 'yes' if r['honest'] else 'NO'} | "
                     f"{'yes' if r['recall_ok'] else 'NO'} |")
    return "\n".join(lines)


def new_sessions_table(results: dict[str, dict], held_out: set[str]) -> str:
    lines = ["| family | role | precision | recall | weighted F1 | PR-AUC | precision at the floor, threshold chosen on them | "
             "sessions keeping the floor | worst session's recall | sessions inside the predicted test interval: precision, recall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        fresh, role = r.get("new_sessions"), "held out" if name in held_out else "development"
        if fresh and "error" in fresh:
            lines.append(f"| {name} | {role} | failed: {fresh['error']} ||||||||")
        elif fresh:
            lines.append(f"| {name} | {role} | {fresh['precision']:.3f} | {fresh['recall']:.3f} | {fresh['weighted_f1']:.3f} | "
                         f"{fresh['pr_auc']:.3f} | {fresh['precision_at_floor_chosen_on_them']:.3f} | "
                         f"{fresh['sessions_keeping_floor']} of {fresh['sessions']} | {_fmt(fresh['worst_session_recall'])} | "
                         f"{_inside(fresh, 'precision')}, {_inside(fresh, 'recall')} |")
    return "\n".join(lines)


def _inside(fresh: dict, figure: str) -> str:
    got = (fresh.get("inside_predicted_interval") or {}).get(figure)
    return f"{got[0]} of {got[1]}" if got else "-"


def summary(results: dict[str, dict]) -> dict:
    done = [r for r in results.values() if "error" not in r]
    if not done:
        return {"families": len(results), "failed": len(results)}
    prec = [r["test_precision"] for r in done]
    return {"families": len(results), "failed": len(results) - len(done),
            "mean_test_precision": round(sum(prec) / len(prec), 4), "worst_test_precision": round(min(prec), 4),
            "mean_test_recall": round(sum(r["test_recall"] for r in done) / len(done), 4),
            "honest": sum(bool(r["honest"]) for r in done), "recall_ok": sum(r["recall_ok"] for r in done),
            **_new_sessions_summary([r["new_sessions"] for r in done if r.get("new_sessions") and "error" not in r["new_sessions"]])}


def _new_sessions_summary(fresh: list[dict]) -> dict:
    if not fresh:
        return {}
    return {"new_sessions": {"families": len(fresh), "mean_precision": round(sum(f["precision"] for f in fresh) / len(fresh), 4),
                             "worst_precision": min(f["precision"] for f in fresh),
                             "mean_recall": round(sum(f["recall"] for f in fresh) / len(fresh), 4),
                             "sessions_keeping_floor": sum(f["sessions_keeping_floor"] for f in fresh),
                             "sessions": sum(f["sessions"] for f in fresh),
                             "inside_predicted_interval": {
                                 k: [sum((f.get("inside_predicted_interval") or {}).get(k, [0, 0])[i] for f in fresh) for i in (0, 1)]
                                 for k in ("precision", "recall")}}}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    protocol = [f for f in FAMILIES if f != "clear"]  # "clear" is the demo's easy data, not a kind of session
    ap.add_argument("--families", default=",".join(protocol), help="comma-separated (default: all of " + ", ".join(protocol) + ")")
    ap.add_argument("--held-out", default="", help="families reported apart from the rest (comma-separated)")
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments" / "haadf.toml")
    ap.add_argument("--budget-min", type=float, default=15.0, help="search minutes per family (default 15)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="passed to nas search (repeatable)")
    ap.add_argument("--n", type=int, default=2000, help="frames per family (default 2000)")
    ap.add_argument("--size", type=int, default=128, help="frame size in px (default 128)")
    ap.add_argument("--seed", type=int, default=20, help="family i of the catalog gets seed S + i (default 20: "
                    "seeds 20-29, which no README figure uses)")
    ap.add_argument("--slack", type=float, default=0.05, help="test recall may fall this far below the floor (default 0.05)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "generalization")
    ap.add_argument("--fresh", action="store_true", help="rerun families that have a result already")
    ap.add_argument("--groups", type=int, default=None, help="sessions per family's data (default: the family's own; "
                    "another count is its own folder, ...-g<G>)")
    ap.add_argument("--positive-rate", type=float, default=None, metavar="P",
                    help="nas demo-data --positive-rate for every family's data and new sessions (default: the family's)")
    ap.add_argument("--rate-spread", type=float, default=None, metavar="S",
                    help="nas demo-data --rate-spread: how far sessions' positive shares differ (default: the family's)")
    ap.add_argument("--new-sessions", type=int, default=8, help="judge each export on this many freshly drawn "
                    "sessions of its family (default 8; 0: off)")
    args = ap.parse_args()
    args.families = [f for f in args.families.split(",") if f]
    args.held_out = {f for f in args.held_out.split(",") if f}
    for option, names in (("--families", set(args.families)), ("--held-out", args.held_out)):
        if names - set(FAMILIES):
            raise SystemExit(f"{option}: unknown family {', '.join(sorted(names - set(FAMILIES)))}; expected some of {', '.join(FAMILIES)}")
    if args.held_out - set(args.families):
        raise SystemExit(f"--held-out: {', '.join(sorted(args.held_out - set(args.families)))} not among --families")
    if args.groups is not None and args.n < 60:
        raise SystemExit(f"--groups {args.groups}: --n {args.n} frames cannot make 3 sessions of at least 20; give --n 60 or more")
    if args.groups is not None and not 3 <= args.groups <= args.n // 20:
        raise SystemExit(f"--groups {args.groups}: expected 3 to {args.n // 20} sessions of at least 20 frames "
                         f"(--n {args.n})")
    if not 0 <= args.new_sessions <= 64:
        raise SystemExit(f"--new-sessions {args.new_sessions}: expected 0 (off) to 64 sessions")
    if not args.experiment.is_file():
        raise SystemExit(f"--experiment {args.experiment}: file not found")
    args.experiment = args.experiment.resolve()
    return args


def main() -> None:
    args = parse_args()
    results = {}
    for name in args.families:
        folder = family_folder(name, args)
        kept = folder / "result.json"
        old = json.loads(kept.read_text()) if kept.is_file() else {}
        if not args.fresh and "error" not in old and same_settings(old.get("settings"), settings(args, name)):
            print(f"{name}: reusing {kept}", file=sys.stderr)
            run = next((folder / "results").glob("*/run"))
            results[name] = {**old, **judge(read_card(run), args.slack)}  # judged as this version reads a card
        else:
            print(f"{name}: searching for {args.budget_min:g} minutes", file=sys.stderr, flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            results[name] = run_family(name, args, folder)
            kept.write_text(json.dumps(results[name], indent=1))
        r = results[name]
        r.pop("new_sessions", None)
        if args.new_sessions and "error" not in r:
            print(f"{name}: the export on {args.new_sessions} new sessions", file=sys.stderr, flush=True)
            r["new_sessions"] = on_new_sessions(name, args, next((folder / "results").glob("*/run")), r)
            kept.write_text(json.dumps(r, indent=1))
    print(f"\n{args.experiment.name}, {args.budget_min:g} minutes a family, {args.n} frames of {args.size} px; "
          "test figures at the exported threshold (chosen on validation or out-of-fold data)\n")
    print(table(results, args.held_out, args.slack))
    if args.new_sessions:
        print(f"\nThe same exports on {args.new_sessions} sessions of each family drawn afresh ({NEW_SESSION_FRAMES} frames "
              "each), at the exported threshold\n")
        print(new_sessions_table(results, args.held_out))
    groups = {"all": results, "development": {k: v for k, v in results.items() if k not in args.held_out},
              "held_out": {k: v for k, v in results.items() if k in args.held_out}}
    out = {"experiment": str(args.experiment), "budget_min": args.budget_min, "set": list(args.set or []), "n": args.n,
           "size": args.size, "slack": args.slack, "groups": args.groups or None, "new_sessions": args.new_sessions,
           "families": {k: {key: v for key, v in r.items() if key != "settings"} for k, r in results.items()},
           "summary": {k: summary(v) for k, v in groups.items() if v}}
    print(json.dumps(out))
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
