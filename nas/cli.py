"""The `nas` command: parse, call one function, print. TensorFlow is imported only by commands that need it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nas import __version__, quiet
from nas.console import TrialPrinter, progress
from nas.errors import NasError, Recycled, Stopped
from nas.trial import SHOWN_STATUSES, TrialStatus

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


VERBOSE_HELP = "show TensorFlow's C++ log lines and Python warnings (hidden by default)"


def cmd_demo_data(args) -> int:
    from nas.synthetic import FAMILIES, generate, generate_pool

    names = args.family.split(",")
    options = {"n": args.n, "size": args.size, "seed": args.seed, "groups": args.groups,
               "positive_rate": args.positive_rate, "rate_spread": args.rate_spread}
    labels = generate(args.out, family=args.family, **options) if len(names) == 1 else generate_pool(args.out, names, **options)
    print(f"wrote {args.n // len(names) * len(names)} frames of {args.size} px to {args.out} (labels: {labels})")
    for i, name in enumerate(names):
        print(f"family {name}" + (f" (OUT/{name}, seed {args.seed + i})" if len(names) > 1 else "") + f": {FAMILIES[name].about}")
    return 0


def _experiment(args):
    from nas.config import load_experiment

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.path={_toml_string(args.data)}")
    if getattr(args, "max_trials", None) is not None:
        overrides.append(f"budget.max_trials={args.max_trials}")
    if getattr(args, "time_budget", None) is not None:
        overrides.append(f"budget.time_budget={args.time_budget}")
    return load_experiment(args.experiment, overrides)


def _toml_string(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _chief_address(args) -> tuple[str, int] | None:
    """Where the oracle listens, if this process is a chief: loopback unless --allow-remote says otherwise."""
    if not (args.chief or args.workers or args.bind):
        return None
    from nas.distributed import free_port, is_loopback, parse_address

    host, port = parse_address(args.bind) if args.bind else ("127.0.0.1", 0)
    if not is_loopback(host):
        if not args.allow_remote:
            raise NasError(f"--bind {args.bind}: not a loopback address; the oracle has no authentication, so "
                           "listening beyond this machine needs --allow-remote")
        print(f"nas: warning: the oracle listens on {host}:{port} without authentication; anyone who can reach it "
              "can read and steer this search. Use a private network.", file=sys.stderr)
    return host, port or free_port(host)


def cmd_search(args) -> int:
    exp = _experiment(args)
    chief = _chief_address(args)
    if exp.search.recycle_every and not chief:
        from nas.workers import supervised_search

        run, code = supervised_search(exp, Path(args.results), args.run_id)
        if code == 0:
            print(f"run folder: {run.path}")
        return code
    from nas.search import Session, start_search

    if chief:
        print(f"chief: oracle on {chief[0]}:{chief[1]}; join with 'nas worker RUN' (RUN = the run folder below)", flush=True)
    session = Session(sink=TrialPrinter(), progress=progress("caching frames"), chief=chief, workers=args.workers or 0)
    run = start_search(exp, Path(args.results), args.run_id, session)
    print(f"run folder: {run.path}")
    return 0


def cmd_resume(args) -> int:
    from nas.search import Session, resume_search

    session = Session(sink=TrialPrinter(), progress=progress("caching frames"), deadline=args.deadline,
                      worker_trials=args.worker_trials, chief=_chief_address(args), workers=args.workers or 0)
    run = resume_search(Path(args.run), max_trials=args.max_trials, time_budget=args.time_budget, session=session)
    if not args.worker_trials:  # a worker's supervisor says it once at the end
        print(f"run folder: {run.path}")
    return 0


def cmd_worker(args) -> int:
    from nas.distributed import parse_address
    from nas.search import worker_search

    chief = parse_address(args.chief) if args.chief else None
    run = worker_search(Path(args.run), chief, args.tuner_id, sink=TrialPrinter())
    print(f"worker done: {run.path}")
    return 0


def cmd_export(args) -> int:
    import json
    import shlex

    from nas.export import export_run
    from nas.report import EXPORT_REPORT
    from nas.report.test_section import headline

    folder = export_run(args.run, trial_id=args.trial, out=args.out, refit=args.refit, ensemble=args.ensemble)
    card = json.loads((folder / "model_card.json").read_text())
    t = card["metrics"]["test"]
    what = f"the mean of trials {', '.join(card['ensemble'])}" if card.get("ensemble") else f"trial {card['trial_id']}"
    print(f"exported {what} to {folder} ({card['latency_ms_batch1']} ms/frame at batch 1)")
    print(f"{headline(card)}; weighted F1 {t['weighted_f1']:.3f}, PR-AUC {t['pr_auc']:.3f}")
    print(f"model card: {folder / 'MODEL_CARD.md'}")
    print(f"report:     {folder / EXPORT_REPORT / 'report.html'} (the test split's mistakes with saliency maps, "
          "and what mattered in the search)")
    print(f"classify frames: nas predict {shlex.quote(str(folder))} FRAME_OR_FOLDER... --out predictions.csv")
    return 0


def cmd_leaderboard(args) -> int:
    from nas.leaderboard import collect, render, select

    rows = select(collect(args.runs), status=args.status, top=args.top, sort=args.sort)
    sys.stdout.write(render(rows, args.format))
    return 0


def cmd_report(args) -> int:
    from nas.report import make_report

    page = make_report(args.run, out=args.out, top=args.top, export=args.export)
    print(f"report: {page} (and {page.with_suffix('.md').name} beside it)")
    return 0


def cmd_predict(args) -> int:
    from nas.predict import predict, write_csv

    rows = predict(args.export, args.paths, threshold=args.threshold, batch=args.batch, signal=args.signal,
                   progress=progress("classifying"))
    counts = write_csv(rows, Path(args.out) if args.out else None, sys.stdout)
    print(f"{counts['frames']} frames: {counts['positive']} positive, {counts['errors']} unreadable, "
          f"{counts['unlike_training']} unlike the training frames" + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _family_names() -> list[str]:
    from nas.synthetic import FAMILIES  # numpy only: cheap next to what every command imports

    return list(FAMILIES)


def cmd_watch(args) -> int:
    from nas.watch import WatchOptions, decision_line, watch

    opts = WatchOptions(decisions=Path(args.decisions) if args.decisions else None, csv=Path(args.csv) if args.csv else None,
                        accept_dir=Path(args.accept_dir) if args.accept_dir else None,
                        reject_dir=Path(args.reject_dir) if args.reject_dir else None, copy=args.copy, poll=args.poll,
                        poll_interval=args.poll_interval, settle=args.settle, once=args.once)
    say = (lambda row: None) if args.quiet else (lambda row: print(decision_line(row), flush=True))
    if not args.once:
        print(f"watching {args.dir} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    summary = watch(args.export, args.dir, opts, threshold=args.threshold, signal_name=args.signal, batch=args.batch,
                    on_row=say, on_note=lambda text: print(f"nas: {text}", file=sys.stderr, flush=True))
    print(f"{summary['frames']} decisions this session: {summary['positive']} accepted, {summary['errors']} errors, "
          f"{summary['unlike_training']} unlike the training frames; stopped ({summary['stopped_by']}); "
          f"log {summary['decisions']}", file=sys.stderr)
    return 0


def cmd_recalibrate(args) -> int:
    from nas.recalibrate import recalibrate

    folder, r = recalibrate(args.export, args.labelled, out=args.out, recall_floor=args.recall_floor,
                            confidence=args.confidence, batch=args.batch)
    old, new = r["previous"], r["new"]
    print(f"recalibrated on {r['n']} frames ({r['positives']} positive): threshold {old['threshold']:.4g} -> {new['threshold']:.4g}")
    for name, op in (("previous", old), ("new", new)):
        print(f"  {name:<8} precision {op['precision']:.3f}, recall {op['recall']:.3f} "
              f"({r['recall_confidence']:g} Wilson lower bound {op['recall_lower_bound']:.3f})")
    print(f"new export: {folder}")
    return 0


def _watch_parsers(sub) -> None:
    """`nas watch` and `nas recalibrate`: the microscope-side commands."""
    wa = sub.add_parser("watch", help="classify every frame that lands in a folder, once; decisions.jsonl out")
    wa.add_argument("export")
    wa.add_argument("dir", help="the folder frames land in (an acquisition share)")
    wa.add_argument("--decisions", help="decision log (default DIR/decisions.jsonl); a restart continues it")
    wa.add_argument("--csv", help="also write the decisions as CSV to this file")
    wa.add_argument("--accept-dir", help="link (or copy) accepted frame files here for the next stage")
    wa.add_argument("--reject-dir", help="link (or copy) rejected frame files here")
    wa.add_argument("--copy", action="store_true", help="copy into --accept-dir/--reject-dir instead of hard-linking")
    wa.add_argument("--poll", action="store_true", help="poll the folder (network shares, where file events do not arrive)")
    wa.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (default 1)")
    wa.add_argument("--settle", type=float, default=1.0,
                    help="a file not renamed into place nor closed is complete once its size stops changing this long (default 1 s)")
    wa.add_argument("--once", action="store_true", help="decide the frames already in the folder, then exit")
    _classify_args(wa, "most frames classified together in a burst (default 16)")
    wa.add_argument("--quiet", action="store_true", help="no line per decision on standard output")
    wa.set_defaults(func=cmd_watch)

    rc = sub.add_parser("recalibrate", help="a new threshold for a new session from labelled frames, as a new export")
    rc.add_argument("export")
    rc.add_argument("labelled", help="labelled frames of the new session: positive/ and negative/ folders, or labels.csv")
    rc.add_argument("--out", help="the new export folder (default EXPORT-recalibrated-<time>, beside the old one)")
    rc.add_argument("--recall-floor", type=float, help="recall to hold (default: the export's)")
    rc.add_argument("--confidence", type=float,
                    help="one-sided Wilson confidence for the recall (default: the export's, or 0.9 if it had none)")
    rc.add_argument("--batch", type=int, default=16)
    rc.set_defaults(func=cmd_recalibrate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nas", description="Architecture search for HAADF-STEM frame triage: "
                                "the objective is validation precision at a fixed recall floor.")
    p.add_argument("--version", action="version", version=f"stem-nas {__version__}")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    _data_commands(sub)
    _search_commands(sub)
    _model_commands(sub)
    for sp in sub.choices.values():  # `nas export RUN --verbose` works as well as `nas --verbose export RUN`
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return p


def _data_commands(sub) -> None:
    d = sub.add_parser("demo-data", help="simulate a HAADF megalibrary data set (16-bit TIFFs + labels.csv)")
    d.add_argument("out")
    d.add_argument("--n", type=int, default=400, help="number of frames (default 400)")
    d.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--groups", type=int, help="chips/sessions; splits never mix them (default: the family's, 8 for base)")
    d.add_argument("--family", default="base", metavar="NAME",
                   help="kind of data (default base): " + ", ".join(_family_names()) + "; several, comma-separated: "
                        "one data set of all of them (each family in OUT/<name>, its seed the next)")
    d.add_argument("--positive-rate", type=float, metavar="P",
                   help="share of frames drawn positive, on average over sessions (default: the family's)")
    d.add_argument("--rate-spread", type=float, metavar="S",
                   help="how much that share differs between sessions: the log-normal sigma of each session's share "
                        "(default: the family's, 0 but for rare and sessions; 0.6 gives most sessions 10-50%% at 25%%)")
    d.set_defaults(func=cmd_demo_data)


def _classify_args(sp, batch_help: str) -> None:
    """What every command that classifies frames with an export takes."""
    sp.add_argument("--threshold", type=float, help="decision threshold (default: the exported one)")
    sp.add_argument("--signal", help="signal to classify in files holding several (default: the export's data.signal)")
    sp.add_argument("--batch", type=int, default=16, help=batch_help)


def _distributed_args(sp) -> None:
    sp.add_argument("--chief", action="store_true", help="serve the oracle for workers ('nas worker RUN')")
    sp.add_argument("--bind", metavar="HOST:PORT", help="where the oracle listens (default 127.0.0.1, a free port)")
    sp.add_argument("--allow-remote", action="store_true", help="allow --bind beyond loopback (the oracle is unauthenticated)")
    sp.add_argument("--workers", type=int, help="start N local workers and serve them as chief")


def _search_commands(sub) -> None:
    s = sub.add_parser("search", help="run an architecture search; prints the run folder")
    s.add_argument("experiment", help="experiment TOML file")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one key, e.g. --set objective.recall_floor=0.95 (repeatable)")
    s.add_argument("--data", help="data folder (overrides data.path)")
    s.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    s.add_argument("--max-trials", type=int)
    s.add_argument("--time-budget", type=float, help="seconds; the search ends cleanly when it runs out")
    s.add_argument("--results", default="results", help="results folder (default results/)")
    _distributed_args(s)
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("resume", help="continue an interrupted or finished search, optionally with a larger budget")
    r.add_argument("run")
    r.add_argument("--max-trials", type=int)
    r.add_argument("--time-budget", type=float)
    r.add_argument("--worker-trials", type=int, help=argparse.SUPPRESS)  # set by the worker supervisor
    r.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    _distributed_args(r)
    r.set_defaults(func=cmd_resume)

    w = sub.add_parser("worker", help="join a distributed search: ask its chief for trials and run them")
    w.add_argument("run", help="the run folder (shared with the chief)")
    w.add_argument("--chief", help="HOST:PORT of the chief (default: read from RUN/chief.json)")
    w.add_argument("--tuner-id", help="this worker's name; restart a dead worker under its name to continue its trial")
    w.set_defaults(func=cmd_worker)


def _model_commands(sub) -> None:
    e = sub.add_parser("export", help="export the best trial: SavedModel, model.keras, model card, trial log")
    e.add_argument("run")
    e.add_argument("--trial", help="export this trial instead of the best")
    e.add_argument("--out", help="export folder (default RUN/export)")
    e.add_argument("--refit", action="store_true", help="retrain the architecture on train+val for the trial's best epoch count")
    e.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="export the mean probability of the top K trials (threshold chosen on val for the mean)")
    e.set_defaults(func=cmd_export)

    lb = sub.add_parser("leaderboard", help="rank trials of one or more runs")
    lb.add_argument("runs", nargs="+")
    lb.add_argument("--format", default="table", choices=("table", "csv", "json", "md"))
    lb.add_argument("--top", type=int)
    lb.add_argument("--sort", help="column to sort by instead of the search's rank")
    lb.add_argument("--status", default=str(TrialStatus.FINISHED), help=f"one of {', '.join(SHOWN_STATUSES)}, or all "
                    f"(default {TrialStatus.FINISHED})")
    lb.set_defaults(func=cmd_leaderboard)

    rp = sub.add_parser("report", help="report.md and a self-contained report.html: the export's test-split mistakes "
                        "with saliency maps, and what mattered in the search")
    rp.add_argument("run")
    rp.add_argument("--out", help="folder (default RUN/report)")
    rp.add_argument("--export", help="the export to show the mistakes of (default RUN/export, when there is one)")
    rp.add_argument("--top", type=int, default=5, help="trials in the table and the PR plot (default 5)")
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("predict", help="classify frame files (any instrument format) or folders with an export; CSV out")
    pr.add_argument("export")
    pr.add_argument("paths", nargs="+")
    pr.add_argument("--out", help="CSV file (default: standard output)")
    _classify_args(pr, "frames classified together (default 16)")
    pr.set_defaults(func=cmd_predict)

    _watch_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = quiet.verbose_requested(args.verbose)
    quiet.configure(verbose)
    try:
        with quiet.no_warnings(verbose):
            return args.func(args)
    except NasError as exc:
        print(f"nas: error: {exc}", file=sys.stderr)
        return 2
    except Recycled:
        from nas.workers import RECYCLED_EXIT

        return RECYCLED_EXIT
    except Stopped as exc:
        print(f"nas: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        run = getattr(args, "run", None)
        print("\nnas: interrupted" + (f"; continue with 'nas resume {run}'" if run else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
