"""Instrument file formats: each reader returns the file's signals (every image, series, spectrum... it
holds, with its name and calibration); `nas.frames` picks the one to classify and checks it.

TIFF through tifffile; Gatan .dm3/.dm4, Velox/NCEM .emd, FEI TIA .ser/.emi, MRC, HyperSpy .hspy, JEOL .img
through rosettasciio; HDF5 files that no rosettasciio plugin knows (a bare dataset) and Nion Swift .ndata/.ndata1
(a zip of data.npy and metadata.json, read here: rosettasciio has no Nion reader) without it.
"""

from __future__ import annotations

import importlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
RSCIIO_PLUGINS = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".ser": "tia",
                  ".emi": "tia", ".mrc": "mrc", ".hspy": "hspy", ".hdf5": "hspy", ".h5": "hspy", ".img": "jeol"}
NION_SUFFIXES = (".ndata", ".ndata1")
FORMAT_NAMES = {".tif": "TIFF", ".tiff": "TIFF", ".dm3": "Gatan DM3", ".dm4": "Gatan DM4", ".emd": "EMD (Velox/NCEM)",
                ".ser": "FEI TIA .ser", ".emi": "FEI TIA .emi", ".mrc": "MRC", ".hspy": "HyperSpy HDF5", ".hdf5": "HDF5",
                ".h5": "HDF5", ".img": "JEOL .img", ".ndata": "Nion Swift ndata", ".ndata1": "Nion Swift ndata"}
FORMAT_SUFFIXES = TIFF_SUFFIXES + tuple(RSCIIO_PLUGINS) + NION_SUFFIXES

NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3,
               "microns": 1e3, "micrometer": 1e3, "å": 0.1, "angstrom": 0.1, "angstroms": 0.1, "pm": 1e-3, "mm": 1e6,
               "cm": 1e7, "m": 1e9}


@dataclass
class Signal:
    """One data set in a file: its name, its array (maybe lazy), and how many of its leading axes navigate
    (0: an image; 1: a series of images; 2: a scan of images, e.g. 4D-STEM), and its pixel size."""

    title: str
    data: Any
    nav_dims: int
    sig_dims: int
    pixel_size_nm: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def kind(self) -> str:
        if self.sig_dims == 2:
            return {0: "image", 1: "series"}.get(self.nav_dims, f"{self.nav_dims}-D scan of images")
        return {0: "scalar", 1: "spectrum"}.get(self.sig_dims, f"{self.sig_dims}-D signal") + (" map" if self.nav_dims else "")

    def describe(self) -> str:
        return f"'{self.title or '(untitled)'}' ({self.kind}, {'x'.join(map(str, self.shape))})"


def to_nm(scale: Any, units: Any) -> float | None:
    """A pixel size in nm from a calibration scale and its length unit; None for no or a non-length unit."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        return None
    factor = NM_PER_UNIT.get(str(units or "").strip().lower())
    if factor is None or not np.isfinite(scale) or scale <= 0:
        return None
    return scale * factor


def read_signals(path: Path) -> list[Signal]:
    """Every signal the file holds. Raises whatever the format's reader raises on a damaged file."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return [_read_tiff(path)]
    if suffix in NION_SUFFIXES:
        return [_read_nion(path)]
    if suffix in (".h5", ".hdf5") and not _is_hyperspy_file(path):
        return _read_plain_hdf5(path)
    return _read_rsciio(path, RSCIIO_PLUGINS[suffix])


def _read_tiff(path: Path) -> Signal:
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # a damaged file is reported on its row, not also logged
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.samplesperpixel > 1:
            raise ValueError(f"{page.samplesperpixel} samples per pixel (RGB/colour); expected one grayscale channel")
        pixel = _tiff_pixel_size(tif, page)
        if len(tif.pages) > 1:
            return Signal("", tif.asarray(), 1, 2, pixel)
        return Signal("", page.asarray(), 0, 2, pixel)


def _tiff_pixel_size(tif: tifffile.TiffFile, page) -> float | None:
    """From FEI/Thermo metadata, ImageJ's unit, or a centimetre resolution. An inch resolution is ignored:
    writers put 72 dpi there by default, which is no calibration."""
    fei = getattr(tif, "fei_metadata", None) or {}
    if fei.get("Scan", {}).get("PixelWidth"):
        return to_nm(fei["Scan"]["PixelWidth"], "m")
    res = page.tags.get("XResolution")
    if res is None or not res.value[0]:
        return None
    per_unit = res.value[0] / max(res.value[1], 1)
    unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if unit:
        return to_nm(1.0 / per_unit, unit)
    resunit = page.tags.get("ResolutionUnit")
    if resunit is not None and int(resunit.value) == 3:  # RESUNIT.CENTIMETER
        return to_nm(1.0 / per_unit, "cm")
    return None


def _read_rsciio(path: Path, plugin: str) -> list[Signal]:
    """Through rosettasciio, lazily where the plugin can (a Velox file may also hold large EDS cubes)."""
    # rosettasciio warns on every JEOL read that numba is missing (a speed hint, not a problem)
    logging.getLogger("rsciio").setLevel(logging.ERROR)
    module = importlib.import_module(f"rsciio.{plugin}")
    try:
        raw = module.file_reader(str(path), lazy=True)
    except TypeError:  # a plugin without lazy reading
        raw = module.file_reader(str(path))
    out = []
    for sig in raw:
        axes = sig.get("axes") or []
        nav = [a for a in axes if a.get("navigate")]
        sig_axes = [a for a in axes if not a.get("navigate")]
        title = str(((sig.get("metadata") or {}).get("General") or {}).get("title") or "")
        pixel = to_nm(sig_axes[-1].get("scale"), sig_axes[-1].get("units")) if len(sig_axes) == 2 else None
        out.append(Signal(title, sig["data"], len(nav), len(sig_axes), pixel))
    return out


def _is_hyperspy_file(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as h5:
        return "Experiments" in h5 or "file_format" in h5.attrs


def _read_plain_hdf5(path: Path) -> list[Signal]:
    """An HDF5 file without HyperSpy's layout: every numeric dataset, named by its path. Singleton axes are
    dropped; a 3-D dataset is a series of frames along its first axis. Lazy: only the chosen one is read."""
    import h5py

    h5 = h5py.File(path, "r")  # kept open by the datasets it returns; closed when they are collected
    found: list[Signal] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "uif" and obj.ndim >= 1:
            dims = sum(n > 1 for n in obj.shape)
            found.append(Signal(name, _Squeezed(obj), max(dims - 2, 0), min(dims, 2)))

    h5.visititems(visit)
    return found


class _Squeezed:
    """An HDF5 dataset seen without its singleton axes, read only when asked (np.asarray)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.shape = tuple(n for n in dataset.shape if n > 1)
        self.dtype = dataset.dtype

    def __array__(self, dtype=None, copy=None):
        data = self.dataset[()].reshape(self.shape)
        return data if dtype is None else data.astype(dtype)


def _read_nion(path: Path) -> Signal:
    """Nion Swift's ndata: a zip holding data.npy and metadata.json (calibrations as 'spatial_calibrations' in
    an export, 'dimensional_calibrations' in a library item)."""
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if not {"data.npy", "metadata.json"} <= names:
            raise ValueError("a zip without data.npy and metadata.json; not a Nion Swift data item")
        meta = json.loads(zf.read("metadata.json").decode("utf-8"))
        with zf.open("data.npy") as fh:
            data = np.load(fh, allow_pickle=False)
    calibrations = meta.get("spatial_calibrations") or meta.get("dimensional_calibrations") or []
    datum = int(meta.get("datum_dimension_count", min(data.ndim, 2)))
    nav = data.ndim - datum
    pixel = to_nm(calibrations[-1].get("scale"), calibrations[-1].get("units")) if datum == 2 and len(calibrations) == data.ndim else None
    return Signal(str(meta.get("title") or ""), data, nav, datum, pixel)
