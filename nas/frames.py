"""Reading one frame from an instrument file: TIFF (tifffile) or a microscope format (rosettasciio), checked
for what a classifier needs (one 2-D grayscale image of finite values), in its own pixel type.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import tifffile

from nas.errors import NasError

TIFF_SUFFIXES = (".tif", ".tiff")
MICROSCOPE_SUFFIXES = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd"}  # nas[formats]
FRAME_SUFFIXES = TIFF_SUFFIXES + tuple(MICROSCOPE_SUFFIXES)
ACCEPTED_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64, np.uint32, np.int32)


def _read_microscope_file(path: Path) -> np.ndarray:
    """A Gatan .dm3/.dm4 or Velox/NCEM .emd frame through rosettasciio (the optional nas[formats] extra)."""
    try:
        plugin = importlib.import_module(f"rsciio.{MICROSCOPE_SUFFIXES[path.suffix.lower()]}")
    except ImportError:
        raise NasError(f"{path}: reading {path.suffix} files needs the formats extra: pip install 'stem-nas[formats]'") from None
    signals = plugin.file_reader(str(path), lazy=False)
    images = [np.asarray(sig["data"]) for sig in signals if np.ndim(sig["data"]) >= 2]
    if not images:
        raise NasError(f"{path}: holds no image; expected one 2-D frame")
    if len(images) > 1:
        raise NasError(f"{path}: holds {len(images)} images; expected one frame per file")
    return images[0]


def read_frame(path: str | Path) -> np.ndarray:
    """Read one single-frame grayscale image in its own pixel type; raise NasError naming the file otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise NasError(f"{path}: empty file (0 bytes)")
        if path.suffix.lower() in MICROSCOPE_SUFFIXES:
            data = _read_microscope_file(path)
            if data.ndim == 3:
                raise NasError(f"{path}: a stack of {data.shape[0]} frames; expected one grayscale frame")
            return _check_pixels(path, data)
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                raise NasError(f"{path}: a stack of {len(tif.pages)} frames; expected one grayscale frame")
            page = tif.pages[0]
            if page.samplesperpixel > 1:
                raise NasError(f"{path}: {page.samplesperpixel} samples per pixel (RGB/colour); expected one grayscale channel")
            data = page.asarray()
    except NasError:
        raise
    except FileNotFoundError:
        raise NasError(f"{path}: file not found") from None
    except Exception as exc:  # readers raise many types for damaged files
        kind = "TIFF" if path.suffix.lower() in TIFF_SUFFIXES else f"{path.suffix} file"
        raise NasError(f"{path}: not a readable {kind} ({type(exc).__name__}: {exc})") from None
    return _check_pixels(path, data)


def _check_pixels(path: Path, data: np.ndarray) -> np.ndarray:
    data = np.squeeze(data)
    if data.ndim != 2:
        raise NasError(f"{path}: image of shape {data.shape}; expected a 2-D grayscale frame")
    if data.dtype.type not in ACCEPTED_DTYPES:
        raise NasError(f"{path}: pixel type {data.dtype}; expected uint8, uint16, int16 or float32")
    if min(data.shape) < 8:
        raise NasError(f"{path}: frame of {data.shape[0]}x{data.shape[1]} px is too small; expected at least 8x8")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise NasError(f"{path}: contains NaN or infinite values")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise NasError(f"{path}: constant image (every pixel {lo:g}); nothing to classify")
    return data

