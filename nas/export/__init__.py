"""Export the winner: the trial's scored weights (or the mean of several models), a threshold calibrated on
validation or out-of-fold probabilities, one evaluation of the test split, and a SavedModel that serves raw
frames (normalization and threshold inside). In steps: choose -> assemble -> calibrate -> (refit) ->
evaluate -> write.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from nas.errors import NasError  # noqa: E402
from nas.export import members as members_mod  # noqa: E402
from nas.export.calibrate import calibrate, evaluate, refit  # noqa: E402
from nas.export.write import SAVED_MODEL, write_export  # noqa: E402
from nas.latency import measure_latency_ms  # noqa: E402
from nas.reopen import reopen  # noqa: E402
from nas.runlog import run_lock  # noqa: E402

__all__ = ["SAVED_MODEL", "export_run"]


def export_run(run_path: str | Path, trial_id: str | None = None, out: str | Path | None = None, *, refit: bool = False,
               ensemble: int = 1) -> Path:
    """Export one trial of a run (or the mean of the top `ensemble` trials); returns the export folder.

    With refit, the architecture is retrained on train+val for the trial's best number of epochs; the
    threshold still comes from the searched model's validation probabilities (val is no longer held out).
    An ensemble's threshold is chosen on the mean of its members' probabilities, like a single model's.
    """
    if ensemble < 1:
        raise NasError(f"--ensemble {ensemble}: expected 1 or more trials")
    if ensemble > 1 and (trial_id is not None or refit):
        raise NasError("--ensemble takes the top trials itself: it cannot be combined with --trial or --refit")
    opened = reopen(run_path)
    with run_lock(opened.run):
        return _export(opened, trial_id, Path(out) if out else opened.run.export, refit_on=refit, ensemble=ensemble)


def _export(opened, trial_id: str | None, final: Path, *, refit_on: bool, ensemble: int) -> Path:
    members = members_mod.choose(opened.run, trial_id, ensemble)
    size = members_mod.image_size(opened, members)
    frames = opened.frames(all_sizes=size != opened.exp.data.image_size)
    net, fold_models = members_mod.network(opened, members, size)
    cal = calibrate(opened, members, net, fold_models, frames, size)
    several = len(members) > 1 or len(members[0].weights) > 1
    latency = round(measure_latency_ms(net, size), 4) if several else None  # a mean costs its members' latencies
    refit_info = None
    if refit_on:
        net, refit_info = refit(opened, members[0], frames, size)
    exp = opened.exp
    results = evaluate(net, frames, size, cal, exp.objective.recall_floor, exp.export.bootstrap, exp.data.seed,
                       tta=exp.augment.tta)
    return write_export(final, opened, members, net, size, frames, cal, results, latency=latency, refit=refit_info)
