"""What the CLI prints while a search runs: one line per trial (and per fold under cross-validation) on
stdout, and on a terminal a live bar on stderr. The search itself prints nothing; it emits events."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from nas.runlog import SEARCH_T0_ENV
from nas.trial import Event, TrialRecord, TrialStatus, from_fields


def progress(desc: str) -> Callable[[int, int], None]:
    """A tqdm bar on stderr, created on first call; silent when stderr is not a terminal and in tests."""
    from tqdm import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False,
                                disable=not sys.stderr.isatty())
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


class TrialPrinter:
    """An event sink: trials done of the budget, elapsed time (from the search's start, for a recycled
    worker too), the best objective so far."""

    def __init__(self) -> None:
        self.best: float | None = None
        self.t0 = float(os.environ.get(SEARCH_T0_ENV) or time.time())
        self.bar = None

    def __call__(self, ev: dict[str, Any]) -> None:
        handler = {Event.SEARCH_STARTED: self.started, Event.TRIAL_PROPOSED: self.proposed,
                   Event.TRIAL_FINISHED: self.finished, Event.FOLD_FINISHED: self.fold,
                   Event.TRIAL_FAILED: self.failed, Event.TRIAL_INTERRUPTED: self.interrupted,
                   Event.BUDGET_PASSED: self.overrun, Event.SEARCH_ENDED: self.ended}.get(ev["event"])
        if handler:
            handler(ev)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=sys.stdout, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if self.best is not None:
                self.bar.set_postfix_str(f"best {self.best:.3f}")

    def started(self, ev: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.best = ev.get("best")
        self.bar = tqdm(total=ev["max_trials"], initial=ev.get("done", 0), desc="trials", unit="trial", file=sys.stderr,
                        leave=False, disable=not sys.stderr.isatty(), bar_format="{desc} {n}/{total} |{bar}| {elapsed} {postfix}")
        where = (f"{ev['folds']}-fold cross-validation over {ev['val']} train+val frames" if ev.get("folds")
                 else f"{ev['train']} train / {ev['val']} val frames")
        self.say(f"search: {ev['tuner']} over {ev['space']}, up to {ev['max_trials']} trials; {where}"
                 + (f"; {ev['skipped']} bad frames skipped" if ev["skipped"] else "") + (" (resumed)" if ev["resumed"] else ""))
        parts = [f"{s} {b['n']} ({100 * b['positives'] / max(b['n'], 1):.0f}% positive)" for s, b in ev["balance"].items()]
        self.say(f"data: {', '.join(parts)}; {ev['decoded']} frames decoded, the rest from the cache")

    def finished(self, ev: dict[str, Any]) -> None:
        rec: TrialRecord = from_fields(TrialRecord, {**ev, "status": TrialStatus.FINISHED})
        if not rec.feasible:
            self.say(f"trial {rec.trial_id}: {rec.reason} ({rec.params} params); not trained")
            return self.advance()
        obj = rec.objective or 0.0
        if not rec.raced_out:  # a raced-out trial's estimate comes from fewer frames: it is not "the best so far"
            self.best = obj if self.best is None else max(self.best, obj)
        lo, hi = rec.objective_ci95 or (obj, obj)
        folds = f", {rec.folds_done}/{rec.folds_total} folds" if rec.folds_total else ""
        note = f"  [{rec.reason}]" if rec.reason else ""
        self.say(f"trial {rec.trial_id}: {rec.split} precision@recall {obj:.3f} [{lo:.2f}-{hi:.2f}] (thr {rec.threshold:.3g}, "
                 f"PR-AUC {rec.pr_auc:.3f}), {rec.params} params, {rec.epochs_run} ep{folds}, {rec.seconds:.1f}s | "
                 f"best {self.best:.3f} | elapsed {time.time() - self.t0:.0f}s{note}")
        self.advance()

    def proposed(self, ev: dict[str, Any]) -> None:
        seconds, exponent = ev.get("predicted_seconds"), ev.get("cost_exponent")
        self.say(f"  trial {ev['trial_id']}: proposed as {ev['proposed_by']}"
                 + (f" (cost^{exponent:.2f})" if exponent is not None else "")
                 + (f", predicted {seconds:.0f}s" if seconds is not None else ""))

    def fold(self, ev: dict[str, Any]) -> None:
        self.say(f"  trial {ev['trial_id']} fold {ev['fold']}: precision@recall {ev['objective']:.3f} on {ev['n']} frames, "
                 f"{ev['seconds']:.0f}s")

    def failed(self, ev: dict[str, Any]) -> None:
        self.say(f"trial {ev['trial_id']}: FAILED: {ev['reason'].splitlines()[0][:200]}")
        self.advance()

    def interrupted(self, ev: dict[str, Any]) -> None:
        self.say(f"trial {ev['trial_id']}: interrupted ({ev['reason']}); 'nas resume' continues it")

    def overrun(self, ev: dict[str, Any]) -> None:
        left = ev.get("seconds_left")
        more = f" (about {left / 60:.0f} min more at its pace so far)" if left is not None else ""
        self.say(f"time budget reached before any trial finished: trial {ev['trial_id']} goes on to finish{more}, so "
                 "the run has a model to export, and the search ends after it (Ctrl-C stops it; 'nas resume' continues "
                 "it). On this machine a search that judges more than one trial needs a larger budget.time_budget")

    def ended(self, ev: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.say(f"search ended: {ev['reason']}")
