"""Graceful stop: the first Ctrl-C or SIGTERM asks the search to stop after the current epoch (which is
then checkpointed); a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_requested: dict[str, str | None] = {"by": None}


def requested() -> str | None:
    """The signal's name if a stop was asked for, else None."""
    return _requested["by"]


def request(by: str) -> None:
    _requested["by"] = by


@contextmanager
def handling(handler) -> Iterator[None]:
    """Install `handler` for SIGINT and SIGTERM for the block (main thread only), then restore the old ones."""
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the handlers for the duration of a search (main thread only), then restore the old ones."""
    _requested["by"] = None

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if _requested["by"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        _requested["by"] = name

    try:
        with handling(handler):
            yield
    finally:
        _requested["by"] = None
