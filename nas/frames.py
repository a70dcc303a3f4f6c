"""Reading frames from an instrument file (see `nas.formats` for the formats): pick the signal to classify by
name, check it is what a classifier needs (2-D grayscale frames of finite real values), and keep the pixel
type and the pixel size. A series (a TIA .ser of repeated scans, a multi-page TIFF) is several frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nas.errors import NasError
from nas.formats import FORMAT_NAMES, FORMAT_SUFFIXES, TIFF_SUFFIXES, Signal, read_signals

FRAME_SUFFIXES = FORMAT_SUFFIXES
MIN_SIDE = 8


@dataclass
class FrameSet:
    """The frames of one file: (N, H, W) in the file's own pixel type, N = 1 unless it is a series."""

    path: Path
    frames: np.ndarray
    pixel_size_nm: float | None
    signal: str
    series: bool
    problems: dict[int, str] = field(default_factory=dict)  # frame index -> why it cannot be classified

    def __len__(self) -> int:
        return len(self.frames)


def select_signal(path: Path, signals: list[Signal], name: str = "") -> Signal:
    """The signal named `name` (exact, else a substring, case-insensitive); with no name, the one whose name
    contains HAADF, else the only image or series; else an error listing what the file holds."""
    images = [s for s in signals if s.kind in ("image", "series")]
    held = "; ".join(s.describe() for s in signals) or "nothing"
    if name:
        lowered = name.lower()
        hits = [s for s in signals if s.title.lower() == lowered] or [s for s in signals if lowered in s.title.lower()]
        if not hits:
            raise NasError(f"{path}: no signal named {name!r} (data.signal); it holds {held}")
        if len(hits) > 1:
            raise NasError(f"{path}: {len(hits)} signals match {name!r} (data.signal): {held}; give the full name")
        if hits[0].kind not in ("image", "series"):
            raise NasError(f"{path}: signal {hits[0].describe()} is not a 2-D image or a series of them")
        return hits[0]
    haadf = [s for s in images if "haadf" in s.title.lower()]
    if len(haadf) == 1:
        return haadf[0]
    if len(haadf) > 1:
        raise NasError(f"{path}: {len(haadf)} HAADF signals ({held}); choose one by name with data.signal or --signal")
    if len(images) == 1:
        return images[0]
    if not images:
        raise NasError(f"{path}: holds no 2-D image; it holds {held}")
    raise NasError(f"{path}: holds {len(images)} images and none is named HAADF ({held}); choose one by name with "
                   "data.signal or --signal")


def read_frames(path: str | Path, signal: str = "") -> FrameSet:
    """All frames of the chosen signal of one file; raise NasError (naming the file, in the format's terms)
    when the file cannot be read or holds nothing to classify. Frames with NaN or constant values are
    listed in `problems`, so a series goes on without them."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FRAME_SUFFIXES:
        raise NasError(f"{path}: unknown frame format {suffix or '(no suffix)'!r}; expected one of {', '.join(FRAME_SUFFIXES)}")
    try:
        if path.stat().st_size == 0:
            raise NasError(f"{path}: empty file (0 bytes)")
        chosen = select_signal(path, read_signals(path), signal)
        data = np.asarray(chosen.data)
    except NasError:
        raise
    except FileNotFoundError:
        raise NasError(f"{path}: file not found") from None
    except Exception as exc:  # readers raise many types for damaged files
        raise NasError(f"{path}: {_unreadable(suffix)} ({type(exc).__name__}: {str(exc)[:200]})") from None
    frames = _check_shape(path, data, chosen)
    problems = {i: p for i, frame in enumerate(frames) if (p := _value_problem(frame))}
    return FrameSet(path, frames, chosen.pixel_size_nm, chosen.title, chosen.nav_dims == 1, problems)


def _unreadable(suffix: str) -> str:
    if suffix in TIFF_SUFFIXES:
        return "not a readable TIFF"
    return f"not a readable {suffix} file ({FORMAT_NAMES[suffix]})"


def _check_shape(path: Path, data: np.ndarray, chosen: Signal) -> np.ndarray:
    if data.dtype.kind not in "uif":
        raise NasError(f"{path}: pixel type {data.dtype}; expected real intensities (an integer or float type)")
    frames = data.reshape((-1, *data.shape[-2:])) if data.ndim >= 2 else data
    if frames.ndim != 3 or (chosen.nav_dims == 0 and len(frames) != 1):
        raise NasError(f"{path}: image of shape {data.shape}; expected a 2-D grayscale frame or a series of them")
    if min(frames.shape[1:]) < MIN_SIDE:
        raise NasError(f"{path}: frame of {frames.shape[1]}x{frames.shape[2]} px is too small; expected at least "
                       f"{MIN_SIDE}x{MIN_SIDE}")
    return frames


def _value_problem(frame: np.ndarray) -> str:
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        return "contains NaN or infinite values"
    lo, hi = frame.min(), frame.max()
    if lo == hi:
        return f"constant image (every pixel {float(lo):g}); nothing to classify"
    return ""


def read_frame_and_size(path: str | Path, signal: str = "") -> tuple[np.ndarray, float | None]:
    """One single-frame image and its pixel size (nm, None when the file has none): a labelled frame."""
    fs = read_frames(path, signal)
    if len(fs) > 1:
        raise NasError(f"{fs.path}: a stack of {len(fs)} frames; expected one grayscale frame")
    if fs.problems:
        raise NasError(f"{fs.path}: {fs.problems[0]}")
    return fs.frames[0], fs.pixel_size_nm


def read_frame(path: str | Path, signal: str = "") -> np.ndarray:
    """Read one single-frame grayscale image in its own pixel type; raise NasError naming the file otherwise."""
    return read_frame_and_size(path, signal)[0]


def frame_files(folder: Path) -> list[Path]:
    """Frame files under a folder, recursively, sorted. A TIA .emi beside its .ser files is left out: its
    frames are in the .ser files (the .emi holds metadata), and each frame should be classified once."""
    files = sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in FRAME_SUFFIXES
                   and not q.name.startswith("."))
    return [q for q in files if not is_tia_metadata(q)]


def is_tia_metadata(path: Path) -> bool:
    """An .emi file whose frames are in .ser files beside it (name_1.ser, name_2.ser...)."""
    return path.suffix.lower() == ".emi" and any(path.parent.glob(f"{_glob_escape(path.stem)}_[0-9]*.ser"))


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
