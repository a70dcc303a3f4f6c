"""Why a search stops before its budget of trials: one exception with a reason, which KerasTuner lets
through (a FatalError) and the search loop turns into the right ending."""

from __future__ import annotations

from enum import StrEnum

import keras_tuner


class Reason(StrEnum):
    BUDGET = "time budget reached"  # the in-flight trial stays open in the oracle; resume continues it
    STOP = "stopped"  # Ctrl-C or SIGTERM: the current epoch was finished and checkpointed
    RECYCLE = "recycled"  # this worker process ran its share of trials; a fresh one continues


class Interrupt(keras_tuner.errors.FatalError):
    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(detail or str(reason))
        self.reason, self.detail = reason, detail or str(reason)
