"""Every 2-D image format a microscopist has: each read through `nas predict` as a user would, any pixel type
normalized the same way, the HAADF signal picked by name, a series giving one decision per frame, pixel
sizes read and carried, and a file that cannot be read refused in its own terms. Real instrument files
(fetched at run time, never committed) must all be read."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nas import frames as frames_mod
from nas.errors import NasError
from nas.formats import Signal
from nas.preprocess import normalize_np, normalize_tf

from .conftest import REPO, cli


def scene(size: int = 48, seed: int = 0) -> np.ndarray:
    """A bright disc on a noisy background, values 10..250 (exact in every pixel type)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2.5) ** 2) < (size / 5) ** 2
    return (10 + 180 * disc + rng.integers(0, 60, (size, size))).astype(np.float64)


def axes(n: int, scale: float, units: str) -> list[dict]:
    return [{"size": n, "name": a, "scale": scale, "offset": 0.0, "units": units, "navigate": False} for a in "yx"]


def write_mrc(path: Path, data: np.ndarray, pixel_nm: float) -> None:
    """An MRC 2014 file by hand: 1024-byte header (cell length in Angstrom) then int16 pixels."""
    ny, nx = data.shape
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, nx, ny, 1, 1)  # NX NY NZ MODE(1 = int16)
    struct.pack_into("<3i", header, 28, nx, ny, 1)  # MX MY MZ
    struct.pack_into("<3f", header, 40, nx * pixel_nm * 10, ny * pixel_nm * 10, 10.0)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    header[208:212] = b"MAP "
    path.write_bytes(bytes(header) + data.astype("<i2").tobytes())


def write_ndata(path: Path, data: np.ndarray, pixel_nm: float, title: str = "HAADF") -> None:
    """Nion Swift's ndata1 export: a zip of data.npy and metadata.json."""
    buf = BytesIO()
    np.save(buf, data)
    meta = {"version": 1, "title": title, "datum_dimension_count": 2, "collection_dimension_count": 0,
            "spatial_calibrations": [{"offset": 0.0, "scale": pixel_nm, "units": "nm"}] * 2}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.npy", buf.getvalue())
        zf.writestr("metadata.json", json.dumps(meta))


def formats_folder(root: Path) -> dict[str, float | None]:
    """The same scene in every format this machine can write; returns file name -> pixel size written."""
    import h5py
    from rsciio import emd, hspy

    img = scene()
    root.mkdir()
    sizes: dict[str, float | None] = {}
    for dtype in ("uint8", "uint16", "uint32", "int16", "int32", "float16", "float32", "float64"):
        tifffile.imwrite(root / f"{dtype}.tif", img.astype(dtype))
        sizes[f"{dtype}.tif"] = None
    tifffile.imwrite(root / "imagej.tif", img.astype(np.uint16), imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"unit": "nm"})
    sizes["imagej.tif"] = 0.25
    tifffile.imwrite(root / "centimetre.tif", img.astype(np.uint16), resolution=(1e7 / 0.4, 1e7 / 0.4), resolutionunit="CENTIMETER")
    sizes["centimetre.tif"] = 0.4
    md = {"General": {"title": "HAADF"}, "Signal": {}}
    emd.file_writer(str(root / "velox.emd"), {"data": img.astype(np.uint16), "axes": axes(48, 0.5, "nm"), "metadata": md, "original_metadata": {}})
    sizes["velox.emd"] = 0.5
    hspy.file_writer(str(root / "hyperspy.hspy"), {"data": img.astype(np.float16), "axes": axes(48, 0.002, "µm"), "metadata": md, "original_metadata": {},
                                                    "tmp_parameters": {}, "attributes": {"_lazy": False}, "package_info": {}, "learning_results": {}, "models": {}})
    sizes["hyperspy.hspy"] = 2.0
    write_mrc(root / "cryo.mrc", img, 0.3)
    sizes["cryo.mrc"] = 0.3
    write_ndata(root / "nion.ndata1", img.astype(np.float32), 0.125)
    sizes["nion.ndata1"] = 0.125
    with h5py.File(root / "plain.h5", "w") as h5:
        h5["HAADF"] = img.astype(np.uint16)
        h5["BF"] = (255 - img).astype(np.uint16)
    sizes["plain.h5"] = None
    return sizes


def predict_rows(export: Path, *paths, extra: tuple = ()) -> list[dict]:
    res = cli("predict", export, *paths, *extra)
    assert res.code == 0, res.err
    return list(csv.DictReader(res.out.splitlines()))


def test_every_format_and_pixel_type_gives_the_same_probability_through_nas_predict(exported_run, tmp_path):
    sizes = formats_folder(tmp_path / "f")
    rows = predict_rows(exported_run, tmp_path / "f")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == set(sizes), set(sizes) ^ set(by_name)
    assert all(r["error"] == "" for r in rows), [r["error"] for r in rows if r["error"]]
    probs = {name: float(r["probability"]) for name, r in by_name.items()}
    reference = probs["uint16.tif"]
    for name, p in probs.items():  # same content, any type or format: normalized the same way
        assert p == pytest.approx(reference, abs=2e-6), name
    for name, size in sizes.items():
        got = by_name[name]["pixel_size_nm"]
        assert (float(got) if got else None) == pytest.approx(size, rel=1e-5) if size else got == "", name


def test_a_series_gives_one_decision_per_frame(exported_run, tmp_path):
    stack = np.stack([scene(seed=s) for s in range(3)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "series.tif", stack, photometric="minisblack")
    stack[1] = 7  # a blank scan in the middle of the series: reported on its own row, the others classified
    tifffile.imwrite(tmp_path / "blank.tif", stack, photometric="minisblack")
    rows = predict_rows(exported_run, tmp_path / "series.tif", tmp_path / "blank.tif")
    assert [(Path(r["path"]).name, r["frame"]) for r in rows] == [
        ("series.tif", "0"), ("series.tif", "1"), ("series.tif", "2"), ("blank.tif", "0"), ("blank.tif", "1"), ("blank.tif", "2")]
    assert [r["error"] == "" for r in rows] == [True, True, True, True, False, True]
    assert "blank.tif frame 1: constant image" in rows[4]["error"]
    # the same frames, so the same probabilities; to float32 rounding, not bit for bit: the blank frame leaves
    # a batch of 2 where the series had 3, and on an AVX2-only CPU (AMD EPYC) the kernels then round
    # differently (0.5268378 against 0.5268379, seen 2026-12-03)
    same = lambda a, b: abs(float(a) - float(b)) < 1e-5  # noqa: E731
    assert same(rows[3]["probability"], rows[0]["probability"]) and same(rows[5]["probability"], rows[2]["probability"])


def test_the_haadf_signal_is_picked_by_name_and_data_signal_chooses_another(tmp_path):
    import h5py

    img = scene()
    with h5py.File(tmp_path / "two.h5", "w") as h5:
        h5["detectors/HAADF"] = img.astype(np.uint16)
        h5["detectors/BF"] = (300 - img).astype(np.uint16)
        h5["spectrum"] = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(frames_mod.read_frame(tmp_path / "two.h5"), img.astype(np.uint16))
    np.testing.assert_array_equal(frames_mod.read_frame(tmp_path / "two.h5", "detectors/BF"), (300 - img).astype(np.uint16))
    with pytest.raises(NasError, match=r"no signal named 'DF4'.*'detectors/BF' \(image, 48x48\)"):
        frames_mod.read_frame(tmp_path / "two.h5", "DF4")
    with pytest.raises(NasError, match="'spectrum' .* is not a 2-D image"):
        frames_mod.read_frame(tmp_path / "two.h5", "spectrum")


@pytest.mark.parametrize("signals, expected", [
    ([Signal("BF", np.zeros((8, 8)), 0, 2), Signal("ADF", np.zeros((8, 8)), 0, 2)], "holds 2 images and none is named HAADF"),
    ([Signal("Plot", np.zeros(512), 0, 1)], "holds no 2-D image; it holds 'Plot' (spectrum, 512)"),
    ([Signal("4D", np.zeros((4, 4, 8, 8)), 2, 2)], "holds no 2-D image; it holds '4D' (2-D scan of images, 4x4x8x8)"),
    ([Signal("HAADF", np.zeros((8, 8)), 0, 2), Signal("HAADF drift-corrected", np.zeros((8, 8)), 0, 2)], "2 HAADF signals"),
])
def test_ambiguous_or_imageless_files_are_refused_with_what_they_hold(signals, expected):
    with pytest.raises(NasError) as info:
        frames_mod.select_signal(Path("x.emd"), signals)
    assert str(info.value).startswith("x.emd: ") and expected in str(info.value)


def test_files_that_cannot_be_read_say_why_in_their_own_terms(tmp_path):
    cases = {"broken.hdf5": b"\x89HDF\r\n" + b"\0" * 40, "broken.ser": b"\0" * 64, "broken.ndata1": b"PK\x03\x04 junk",
             "broken.mrc": b"\0" * 100, "notes.png": b"\x89PNG"}
    expected = {"broken.hdf5": "not a readable .hdf5 file (HDF5", "broken.ser": "not a readable .ser file (FEI TIA .ser",
                "broken.ndata1": "not a readable .ndata1 file (Nion Swift ndata", "broken.mrc": "not a readable .mrc file (MRC",
                "notes.png": "unknown frame format '.png'"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NasError) as info:
            frames_mod.read_frames(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ") and expected[name] in str(info.value), str(info.value)
        assert "TIFF" not in str(info.value) and "\n" not in str(info.value)


def test_physical_scale_makes_two_magnifications_of_one_scene_the_same_input():
    low = scene(64)
    high = np.kron(low, np.ones((2, 2)))  # the same field of view at twice the magnification
    a = normalize_np(low, 32, (0.5, 99.5), pixel_size_nm=1.0, target_nm=2.0)
    b = normalize_np(high, 32, (0.5, 99.5), pixel_size_nm=0.5, target_nm=2.0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    whole = normalize_np(np.pad(low, 16, constant_values=low.min()), 32, (0.5, 99.5))  # resize: the scene shrinks
    assert np.abs(whole - a).max() > 0.2
    wide = normalize_np(low, 32, (0.5, 99.5), pixel_size_nm=1.0, target_nm=3.0)  # window beyond the frame: dark
    assert wide[0, 0] == 0 and wide[16, 16] > 0
    with pytest.raises(ValueError, match="no pixel size"):
        normalize_np(low, 32, (0.5, 99.5), None, 2.0)


def test_physical_scale_numpy_and_graph_agree():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60000, (3, 90, 70)).astype(np.uint16)
    pixels = np.array([0.37, 1.0, 2.9])
    for target in (0.0, 1.3):
        ref = np.stack([normalize_np(f, 24, (1, 99), p, target) for f, p in zip(frames, pixels, strict=True)])
        got = normalize_tf(frames.astype(np.float32), 24, (1, 99), pixels if target else None, target).numpy()[..., 0]
        np.testing.assert_allclose(got, ref, atol=1e-5)


def find_fetch_script() -> Path | None:
    for folder in REPO.parents:
        candidate = folder / "shared" / "real-frames" / "fetch.sh"
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_frames() -> Path:
    """The real instrument files, fetched once into the user cache (GPL-3.0: used at run time, never committed)."""
    out = Path(os.environ.get("NAS_REAL_FRAMES", Path.home() / ".cache" / "stem-nas-real-frames"))
    if not (out / "hyperspy-1.7.6" / "multi_signal.dm3").is_file():
        script = find_fetch_script()
        if script is None or shutil.which("bash") is None:
            pytest.skip("real frames not fetched and shared/real-frames/fetch.sh not found")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"could not fetch the real frames (no package index?): {done.stderr.strip()[-300:]}")
    return out


def test_every_real_instrument_file_is_read_by_nas_predict(exported_run, real_frames, tmp_path):
    emi = real_frames / "hyperspy-1.7.6" / "03_Scanning Preview.emi"
    rows = predict_rows(exported_run, real_frames, emi)
    files = {Path(r["path"]).name for r in rows}
    present = {p.name for p in real_frames.rglob("*") if p.is_file()}
    assert files == present, present ^ files  # the .emi too: given by name, though a folder leaves it to its .ser
    assert [r["error"] for r in rows if r["error"]] == []
    count = {name: sum(Path(r["path"]).name == name for r in rows) for name in files}
    assert count["03_Scanning Preview_1.ser"] == count["03_Scanning Preview.emi"] == 5  # TIA series: 5 scans
    assert count["exp_hrstem.h5"] == 5 and count["multi_signal.dm3"] == 1
    pixel = {Path(r["path"]).name: r["pixel_size_nm"] for r in rows}
    assert float(pixel["fei_emd_image.emd"]) == pytest.approx(5.30, abs=0.01)  # 0.0053 µm in the file
    assert float(pixel["JEOL HAADF Image.dm4"]) == pytest.approx(1.249, abs=0.001)
    assert pixel["test_ADF_cropped.hdf5"] == ""  # its axes carry no unit: unknown, not guessed


def test_a_physical_scale_travels_from_training_to_the_exported_model(tiny_data, tmp_path):
    """data.pixel_size_nm: the same scene at two magnifications trains and serves as one; pixel sizes land in
    split.csv and the card; the SavedModel takes each frame's pixel size and agrees with the numpy path."""
    import tomllib

    import keras
    import tensorflow as tf
    import tomli_w

    from .conftest import write_experiment

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("*.tif"))
    rows = list(csv.DictReader(open(tiny_data / "labels.csv")))
    for i, row in enumerate(rows):  # half the frames at twice the magnification, same field of view
        img = tifffile.imread(tiny_data / row["path"])
        img, px = (np.kron(img, np.ones((2, 2), img.dtype)), 0.25) if i % 2 else (img, 0.5)
        tifffile.imwrite(data / row["path"], img, imagej=True, resolution=(1 / px, 1 / px), metadata={"unit": "nm"})
    exp = write_experiment(tmp_path / "e.toml", data, budget={"max_trials": 1, "epochs": 1})
    values = tomllib.loads(exp.read_text())
    values["data"]["pixel_size_nm"] = 0.75  # a model pixel covers 0.75 nm: 32 px span the 24 nm of every frame
    exp.write_text(tomli_w.dumps(values))
    assert (res := cli("search", exp, "--results", tmp_path / "res", "--run-id", "r")).code == 0, res.err
    run = tmp_path / "res" / "tiny" / "r"
    assert (res := cli("export", run)).code == 0, res.err
    split = list(csv.DictReader(open(run / "split.csv")))
    assert {r["pixel_size_nm"] for r in split} == {"0.5", "0.25"}
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["input"]["pixel_size_nm"] == 0.75 and card["pixel_sizes_nm"]["known"] == len(split)

    frames = [tifffile.imread(data / rows[k]["path"]) for k in (0, 1)]
    served = tf.saved_model.load(str(run / "export" / "saved_model")).signatures["serving_default"]
    model = keras.saving.load_model(run / "export" / "model.keras")
    for frame, px in zip(frames, (0.5, 0.25), strict=True):
        got = served(frames=tf.constant(frame[None].astype(np.float32)), pixel_size_nm=tf.constant([px], tf.float64))
        ref = model.predict(normalize_np(frame, 32, (0.5, 99.5), px, 0.75)[None, ..., None], verbose=0)
        assert float(got["probability"][0]) == pytest.approx(float(ref[0, 0]), abs=1e-5)
    same = tmp_path / "same"
    same.mkdir()
    tifffile.imwrite(same / "low.tif", frames[0], imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm"})
    tifffile.imwrite(same / "high.tif", np.kron(frames[0], np.ones((2, 2), frames[0].dtype)), imagej=True,
                     resolution=(4.0, 4.0), metadata={"unit": "nm"})
    tifffile.imwrite(same / "plain.tif", frames[0])  # no calibration: refused on its row, the others go on
    got = {Path(r["path"]).name: r for r in predict_rows(run / "export", same)}
    assert float(got["low.tif"]["probability"]) == pytest.approx(float(got["high.tif"]["probability"]), abs=1e-4)
    assert "no pixel size in the file; this model resamples frames to 0.75 nm per pixel" in got["plain.tif"]["error"]
