"""Reopening a run: its frozen experiment and space, and its frames. Search (resume, workers), export and
report all start here, so a run is read back the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nas.config import Experiment, load_experiment
from nas.prepare import Progress, RunFrames, reopen_frames
from nas.runlog import RunDir
from nas.space import SearchSpace, parse_space


@dataclass(frozen=True)
class OpenRun:
    """A run folder with its frozen configuration read back."""

    run: RunDir
    exp: Experiment
    space: SearchSpace

    def frames(self, *, all_sizes: bool = False, progress: Progress | None = None) -> RunFrames:
        """The run's frames from its split.csv (at every input size the space may choose, if asked)."""
        sizes = self.space.sizes(self.exp.data.image_size) if all_sizes else ()
        return reopen_frames(self.run, self.exp.data, self.run.cache_root, sizes=sizes, progress=progress)


def reopen(run_path: str | Path) -> OpenRun:
    """The run at run_path, refusing a folder that is not a run."""
    run = RunDir(Path(run_path)).check_exists()
    exp = load_experiment(run.experiment, resolve_paths=False)
    return OpenRun(run, exp, parse_space(run.space.read_text(), str(run.space)))
