"""A clean terminal: no TensorFlow/absl C++ log lines and no Python warnings in normal output; `nas --verbose`
lets all of them through.

TF_CPP_MIN_LOG_LEVEL silences TensorFlow's C++ logging once absl is initialised, but TensorFlow 2.21 logs
a few lines before that ("WARNING: All log messages before absl::InitializeLog() ...", then `I0000 ...
port.cc] oneDNN custom operations are on`, `cudart_stub.cc] Could not find cuda drivers`), twice per import,
whatever the variable says (measured here: 6 lines per process). Those come from C++ straight to file
descriptor 2, so the first import of tensorflow runs with descriptor 2 pointed at a temporary file, and what
it wrote is passed on afterwards except lines of exactly those shapes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "NAS_VERBOSE"  # inherited by worker processes, which parse no --verbose of their own
ABSL_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.]+:\d+\] )"
)


def verbose_requested(flag: bool) -> bool:
    return flag or os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose: bool) -> None:
    """Set the process up before anything imports TensorFlow: quiet by default, everything when verbose."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "keras_tuner", "autokeras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextmanager
def no_warnings(verbose: bool) -> Iterator[None]:
    """Python warnings (Keras, TensorFlow, scikit-learn, setuptools) are not for the user of a finished tool;
    --verbose shows them. Scoped, so that a caller's own filters are as they were afterwards."""
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def filtered_stderr(noise: re.Pattern[str] = ABSL_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 for the duration; then write out every captured line that is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except ValueError:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines(True) if not noise.match(ln)]
            if kept:
                os.write(2, "".join(kept).encode())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` like the normal path finder, but executes it under filtered_stderr; once only."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self._inner.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, get_filename, ...: the real loader's
        return getattr(self._inner, name)
