"""The demo-data simulator: deterministic, physically sensible, labels consistent with what was rendered."""

import csv

import numpy as np
import pytest
import tifffile

from nas.synthetic import ELEMENTS, MAX_CUT_FRACTION, Particle

from .conftest import cli


def test_demo_data_command_writes_16bit_tiffs_and_labels(tmp_path):
    res = cli("demo-data", tmp_path / "d", "--n", 40, "--size", 40, "--seed", 5, "--groups", 3)
    assert res.code == 0, res.err
    rows = list(csv.DictReader(open(tmp_path / "d" / "labels.csv")))
    assert len(rows) == 40
    assert {"path", "label", "group", "kind", "z_eff", "blur_sigma_px"} <= set(rows[0])
    for row in rows:
        assert row["path"].startswith(row["label"] + "/")
        img = tifffile.imread(tmp_path / "d" / row["path"])
        assert img.dtype == np.uint16 and img.shape == (40, 40)
        if row["label"] == "positive":
            assert int(row["n_particles"]) == 1 and float(row["cut_fraction"]) <= MAX_CUT_FRACTION
    assert {r["label"] for r in rows} == {"positive", "negative"}
    assert len({r["group"] for r in rows}) == 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cli("demo-data", tmp_path / name, "--n", 6, "--size", 32, "--seed", seed)
    a = (tmp_path / "a" / "labels.csv").read_text()
    assert a == (tmp_path / "b" / "labels.csv").read_text()
    first = next(csv.DictReader(open(tmp_path / "a" / "labels.csv")))["path"]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert a != (tmp_path / "c" / "labels.csv").read_text()


def test_haadf_contrast_follows_z_to_the_1_7():
    gold = Particle("rounded", 0, 0, 5, 0, {"Au": 1.0}, 5)
    nickel = Particle("rounded", 0, 0, 5, 0, {"Ni": 1.0}, 5)
    assert gold.contrast / nickel.contrast == pytest.approx((ELEMENTS["Au"] / ELEMENTS["Ni"]) ** 1.7)
    alloy = Particle("rounded", 0, 0, 5, 0, {"Au": 0.5, "Ni": 0.5}, 5)
    assert nickel.z_eff < alloy.z_eff < gold.z_eff


def test_demo_data_has_every_negative_kind_and_borderline_cases(tmp_path):
    cli("demo-data", tmp_path / "d", "--n", 200, "--size", 32, "--seed", 0)
    rows = list(csv.DictReader(open(tmp_path / "d" / "labels.csv")))
    kinds = {r["kind"] for r in rows if r["label"] == "negative"}
    assert {"empty", "multiple", "aggregate", "edge_cut", "defocused", "drift"} <= kinds
    assert sum(r["borderline"] == "True" for r in rows) > 20


def test_base_data_is_what_it_always_was(tmp_path):
    """`nas demo-data` without --family (or with --family base) writes what it wrote before the families:
    the same labels.csv (columns and rows) and the same frames, so existing data and runs stay valid.
    The digest is of the generator before the families were added (commit 2b1cfa3)."""
    import hashlib

    from nas.synthetic import CSV_FIELDS

    for name, extra in (("plain", ()), ("base", ("--family", "base"))):
        assert cli("demo-data", tmp_path / name, "--n", 12, "--size", 32, "--seed", 1, "--groups", 3, *extra).code == 0
    labels = (tmp_path / "plain" / "labels.csv").read_bytes()
    assert hashlib.sha256(labels).hexdigest() == "96b75db735196ecbc12dbeedad446c440bd24cffc41aba65f25b6ca6ec9f2803"
    assert labels == (tmp_path / "base" / "labels.csv").read_bytes()
    assert next(csv.reader(open(tmp_path / "plain" / "labels.csv"))) == list(CSV_FIELDS)
    for row in csv.DictReader(open(tmp_path / "plain" / "labels.csv")):
        assert (tmp_path / "plain" / row["path"]).read_bytes() == (tmp_path / "base" / row["path"]).read_bytes()


def test_new_shapes_render_what_they_claim():
    from nas.synthetic.particles import signal, thickness

    yy, xx = np.mgrid[0:41, 0:41].astype(np.float64)
    core_shell = Particle("core_shell", 20, 20, 15, 0, {"Fe": 1.0}, 10, detail={"second": {"Au": 1.0}, "core_fraction": 0.5})
    t = thickness(core_shell, xx, yy)
    per_nm = signal(core_shell, t, xx, yy) / np.maximum(t, 1e-9)
    assert per_nm[20, 20] > 3 * per_nm[20, 33]  # through the gold core: half gold, against iron alone at the rim
    hollow = Particle("hollow", 20, 20, 15, 0, {"Au": 1.0}, 10, detail={"cavity": 0.7})
    t = thickness(hollow, xx, yy)
    assert t[20, 20 + 12] > 1.5 * t[20, 20]  # a nanoshell's rim is thicker in projection than its centre
    janus = Particle("janus", 20, 20, 15, 0, {"Au": 1.0}, 10, detail={"second": {"Fe": 1.0}})
    s = signal(janus, thickness(janus, xx, yy), xx, yy)
    assert s[20, 26] > 3 * s[20, 14]  # the gold half (+x) against the iron half
