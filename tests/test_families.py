"""Demo-data families: each generates, labels follow from what was rendered, and each family's knobs change
what the family claims to change (tiny data: tens of frames of 16-32 px)."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nas.synthetic import FAMILIES, FAMILY_FIELDS, generate, instrument

from .conftest import cli, write_experiment


def _rows(out: Path, family: str, n: int, size: int = 32, seed: int = 0, **kw) -> list[dict]:
    generate(out, n=n, size=size, seed=seed, family=family, **kw)
    return list(csv.DictReader(open(out / "labels.csv")))


def _by_group(rows: list[dict], column: str, keep=lambda r: True) -> dict[str, list[float]]:
    out = collections.defaultdict(list)
    for r in rows:
        if keep(r):
            out[r["group"]].append(float(r[column]))
    return out


@pytest.mark.parametrize("name", [f for f in FAMILIES if f != "base"])
def test_every_family_generates_labels_that_follow_from_the_rendered_frame(tmp_path, name):
    size = 32
    rows = _rows(tmp_path, name, 30, size)
    assert len(rows) == 30 and set(FAMILY_FIELDS) <= set(rows[0]) and {r["family"] for r in rows} == {name}
    assert len({r["group"] for r in rows}) == FAMILIES[name].groups
    k = size / 128
    for r in rows:
        assert r["path"].startswith(r["label"] + "/")
        frame = tifffile.imread(tmp_path / r["path"])
        assert frame.dtype == np.uint16 and frame.shape == (size, size) and frame.max() <= 2 ** int(r["bits"]) - 1
        ok = (r["kind"] != "aggregate" and int(r["n_particles"]) == 1 and float(r["cut_fraction"]) <= float(r["cut_limit"])
              and float(r["blur_sigma_px"]) / k <= float(r["focus_limit_px"]) and float(r["drift_px"]) / k <= float(r["drift_limit_px"]))
        assert (r["label"] == "positive") == ok, r
        assert (r["reason"] == "ok") == ok


def test_families_are_deterministic_for_a_seed(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        _rows(tmp_path / name, "sessions", 12, 24, seed)
    a = (tmp_path / "a" / "labels.csv").read_text()
    assert a == (tmp_path / "b" / "labels.csv").read_text() != (tmp_path / "c" / "labels.csv").read_text()
    for row in csv.DictReader(open(tmp_path / "a" / "labels.csv")):
        assert (tmp_path / "a" / row["path"]).read_bytes() == (tmp_path / "b" / row["path"]).read_bytes()


def test_rare_and_sessions_set_the_class_balance(tmp_path):
    rare = _rows(tmp_path / "rare", "rare", 300, 16)
    assert 0.05 <= np.mean([r["label"] == "positive" for r in rare]) <= 0.16
    sessions = _rows(tmp_path / "sessions", "sessions", 300, 16)
    assert 0.15 <= np.mean([r["label"] == "positive" for r in sessions]) <= 0.35
    shares = {float(r["positive_share"]) for r in sessions}
    assert len(shares) == 10 and max(shares) > 3 * min(shares)  # sessions differ in balance, not only on average
    base_rate = _rows(tmp_path / "override", "base", 300, 16, positive_rate=0.3)
    assert 0.22 <= np.mean([r["label"] == "positive" for r in base_rate]) <= 0.38
    spread = cli("demo-data", tmp_path / "spread", "--n", 300, "--size", 16, "--family", "magnification",
                 "--positive-rate", "0.25", "--rate-spread", "0.6")
    assert spread.code == 0, spread.err
    rows = list(csv.DictReader(open(tmp_path / "spread" / "labels.csv")))
    shares = {float(r["positive_share"]) for r in rows}
    assert len(shares) == 8 and max(shares) > 3 * min(shares)  # magnification's sessions now differ in balance too
    assert 0.17 <= np.mean([r["label"] == "positive" for r in rows]) <= 0.35
    alike = _rows(tmp_path / "alike", "sessions", 300, 16, rate_spread=0.0)
    assert len({float(r["positive_share"]) for r in alike}) == 1


def test_magnification_gives_each_session_its_own_particle_sizes(tmp_path):
    def ranges(rows):
        sizes = _by_group(rows, "diameter_px", lambda r: float(r["diameter_px"]) > 0).values()
        return max(min(v) for v in sizes), min(max(v) for v in sizes)

    smallest_of_largest, largest_of_smallest = ranges(_rows(tmp_path / "m", "magnification", 64))
    assert smallest_of_largest > largest_of_smallest  # some session's particles all exceed another's largest
    smallest_of_largest, largest_of_smallest = ranges(_rows(tmp_path / "b", "base", 64))
    assert smallest_of_largest < largest_of_smallest  # base: every chip draws from one range


def test_low_dose_and_detector_change_the_counts(tmp_path):
    low = _rows(tmp_path / "low", "low-dose", 16)
    assert max(float(r["dose"]) for r in low) <= 0.06 < 0.08  # base doses are 0.08-0.5
    det = _rows(tmp_path / "det", "detector", 48)
    twelve = [r for r in det if r["bits"] == "12"]
    assert {r["bits"] for r in det} == {"12", "14", "16"} and twelve
    peaks = [tifffile.imread(tmp_path / "det" / r["path"]).max() for r in twelve]
    assert max(peaks) == 4095  # a 12-bit ADC saturates bright cores at its full scale
    gains = {float(r["gain"]) for r in det}
    assert max(gains) > 10 * min(gains)


def test_afterglow_trails_along_the_fast_scan_and_keeps_the_mean():
    impulse = np.zeros((3, 20))
    impulse[1, 5] = 100.0
    out = instrument.afterglow(impulse, 2.0)
    assert out[1, 4] == 0 and out[1, 6] > 0.3 * out[1, 5] and out[0].sum() == 0
    assert out[1].sum() == pytest.approx(100.0 * (1 - np.exp(-0.5 * 15)), rel=1e-6)  # the tail beyond the edge is lost


def test_drift_sessions_differ_in_smear_and_scan_distortion(tmp_path):
    rows = _rows(tmp_path, "drift", 96)
    medians = [np.median(v) for v in _by_group(rows, "drift_px", lambda r: r["kind"] == "single").values()]
    assert max(medians) > 3 * min(medians)
    assert len({r["drift_direction"] for r in rows}) == 8 and all(r["drift_direction"] for r in rows)
    assert max(abs(float(r["shear_px_per_line"])) for r in rows) > 0.01 and max(float(r["jitter_px"]) for r in rows) > 0.3


def test_margins_label_by_other_limits(tmp_path):
    rows = _rows(tmp_path, "margins", 200)
    k = 32 / 128
    assert all(1.2 <= float(r["focus_limit_px"]) <= 1.4 and 0.05 <= float(r["cut_limit"]) <= 0.1 for r in rows)
    # frames the base rule calls positive are negative here, and the other way round
    assert any(r["reason"] == "defocus" and float(r["blur_sigma_px"]) / k < 1.8 for r in rows)
    assert any(r["label"] == "positive" and float(r["cut_fraction"]) > 0.02 for r in rows)
    assert np.mean([r["borderline"] == "True" for r in rows]) > 0.4


def test_shapes_and_supports_bring_new_appearances_per_session(tmp_path):
    shapes = _rows(tmp_path / "s", "shapes", 96)
    assert {"blobby", "core_shell", "twinned", "janus", "hollow"} <= {r["shape"] for r in shapes}
    favourites = {collections.Counter(r["shape"] for r in shapes if r["group"] == g and r["shape"]).most_common(1)[0][0]
                  for g in {r["group"] for r in shapes}}
    assert len(favourites) >= 3  # sessions favour different shapes
    supports = _rows(tmp_path / "p", "supports", 32)
    per_group = {g: {r["support"] for r in supports if r["group"] == g} for g in {r["group"] for r in supports}}
    assert all(len(s) == 1 for s in per_group.values())  # a session has one support
    assert len(set.union(*per_group.values())) >= 3


def test_bad_family_options_are_one_line_each(tmp_path):
    res = cli("demo-data", tmp_path / "x", "--n", 4, "--family", "cryo")
    assert res.code == 2 and res.err.count("\n") == 1 and "--family cryo" in res.err and "sessions" in res.err
    res = cli("demo-data", tmp_path / "x", "--n", 4, "--positive-rate", "0")
    assert res.code == 2 and "--positive-rate" in res.err
    res = cli("demo-data", tmp_path / "x", "--n", 4, "--rate-spread", "-1")
    assert res.code == 2 and res.err.count("\n") == 1 and "--rate-spread -1" in res.err


def test_largest_particles_still_fit_every_kind():
    """At the top of the magnification range (scale 2.2) particles reach 0.3 of the frame: every kind still
    renders (an aggregate once asked for more room than the frame had), and aggregates stay negative."""
    from nas.synthetic import KINDS, Session, render_frame

    big = Session("chip00", offset=500, gain=2, read_noise=5, line_noise=2, support_nm=10, dose=0.2, scale=2.2)
    for seed in range(12):
        for kind in KINDS:
            frame, params = render_frame(np.random.default_rng(seed), 32, kind, big)
            assert frame.shape == (32, 32) and (params["label"] == "negative" or kind != "aggregate")


def test_a_session_shares_its_settings_and_sessions_differ(tmp_path):
    from nas.synthetic.dataset import FAMILY_FIELDS

    rows = _rows(tmp_path, "sessions", 40, 24)
    per_frame = {"family", "reason", "composition2"}
    for column in set(FAMILY_FIELDS) - per_frame:
        values = {g: {r[column] for r in rows if r["group"] == g} for g in {r["group"] for r in rows}}
        assert all(len(v) == 1 for v in values.values()), column  # one setting per session
    for column in ("scale", "dose", "gain", "drift_scale", "positive_share", "focus_limit_px", "shape_weights"):
        assert len({r[column] for r in rows}) >= 8, column  # ten sessions, (nearly) ten settings: rounding may merge two


def test_several_families_make_one_data_set_whose_sessions_stay_apart(tmp_path):
    res = cli("demo-data", tmp_path / "pool", "--n", 24, "--size", 16, "--seed", 5, "--groups", 3,
              "--family", "base,low-dose")
    assert res.code == 0, res.err
    rows = list(csv.DictReader(open(tmp_path / "pool" / "labels.csv")))
    assert len(rows) == 24 and collections.Counter(r["family"] for r in rows) == {"base": 12, "low-dose": 12}
    assert {r["group"] for r in rows} == {f"{f}-chip0{i}" for f in ("base", "low-dose") for i in range(3)}
    # each family is the data set `--family NAME --seed S+i` would write, frame for frame
    alone = _rows(tmp_path / "alone", "low-dose", 12, size=16, seed=6, groups=3)
    for r, a in zip([r for r in rows if r["family"] == "low-dose"], alone, strict=True):
        assert r["path"] == f"low-dose/{a['path']}" and r["label"] == a["label"]
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "pool" / r["path"]), tifffile.imread(tmp_path / "alone" / a["path"]))
    scanned = cli("search", _pool_experiment(tmp_path), "--results", tmp_path / "results", "--max-trials", "1")
    assert scanned.code == 0, scanned.err
    split = list(csv.DictReader(open(next((tmp_path / "results").glob("*/*/split.csv")))))
    assert all(len({r["split"] for r in split if r["group"] == g}) == 1 for g in {r["group"] for r in split})
    twice = cli("demo-data", tmp_path / "x", "--n", 8, "--family", "base,base")
    assert twice.code == 2 and "named twice" in twice.err and twice.err.count("\n") == 1


def _pool_experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path / "pool.toml", tmp_path / "pool", budget={"max_trials": 1, "epochs": 1})
