"""Write a demo data set: frames under OUT/positive and OUT/negative, every generating parameter in labels.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

from nas.errors import NasError
from nas.synthetic import catalog
from nas.synthetic.families import KINDS, Session, draw_sessions
from nas.synthetic.render import render_frame

CSV_FIELDS = (
    "path", "label", "group", "kind", "shape", "n_particles", "diameter_px", "composition", "z_eff",
    "blur_sigma_px", "drift_px", "cut_fraction", "dose", "borderline", "seed",
)
# Written for every family but base (whose labels.csv stays as it always was): the session's settings and
# limits on each row, so a frame's label and look can be explained from its row alone.
FAMILY_FIELDS = (
    "family", "reason", "composition2", "scale", "positive_share", "offset", "gain", "read_noise", "line_noise",
    "bits", "knee", "afterglow_px", "drift_scale", "drift_direction", "shear_px_per_line", "jitter_px", "hum_px",
    "hum_period_lines", "support", "support_nm", "lattice_px", "contamination", "shape_weights", "focus_limit_px",
    "drift_limit_px", "cut_limit",
)
EXTRA_STREAM = 7  # seeds each frame's stream for what the families add: [seed, frame, EXTRA_STREAM]


def session_row(s: Session) -> dict:
    """A session's settings as labels.csv columns (rounded for reading; the seed reproduces them exactly)."""
    return {
        "scale": round(s.scale, 4), "positive_share": round(s.positive_share, 4), "offset": round(s.offset, 1),
        "gain": round(s.gain, 4), "read_noise": round(s.read_noise, 3), "line_noise": round(s.line_noise, 3),
        "bits": s.bits, "knee": round(s.knee, 1), "afterglow_px": round(s.afterglow, 3),
        "drift_scale": round(s.drift_scale, 4),
        "drift_direction": "" if s.drift_angle is None else round(float(np.degrees(s.drift_angle)), 1),
        "shear_px_per_line": round(s.shear, 5), "jitter_px": round(s.jitter, 3), "hum_px": round(s.hum, 3),
        "hum_period_lines": round(s.hum_period, 2), "support": s.support, "support_nm": round(s.support_nm, 3),
        "lattice_px": round(s.lattice_px, 3), "contamination": s.contamination,
        "shape_weights": " ".join(f"{n}:{w:.3f}" for n, w in zip(s.shapes, s.shape_weights, strict=True)),
        "focus_limit_px": round(s.focus_limit, 4), "drift_limit_px": round(s.drift_limit, 4),
        "cut_limit": round(s.cut_limit, 4),
    }


def generate(out: str | Path, n: int = 400, size: int = 128, seed: int = 0, groups: int | None = None,
             family: str = "base", positive_rate: float | None = None, rate_spread: float | None = None) -> Path:
    """Write n frames of one family to OUT/positive and OUT/negative plus OUT/labels.csv; deterministic for a
    seed. `groups` defaults to the family's number of sessions."""
    fam = catalog.family(family, positive_rate, rate_spread)
    if n < 2:
        raise NasError(f"--n {n}: at least 2 frames are needed")
    if not 16 <= size <= 4096:
        raise NasError(f"--size {size}: expected a frame size between 16 and 4096 pixels")
    groups = fam.groups if groups is None else groups
    if groups < 1:
        raise NasError(f"--groups {groups}: expected at least 1 session")
    legacy = fam == catalog.FAMILIES["base"]
    out = Path(out)
    for label in ("positive", "negative"):
        (out / label).mkdir(parents=True, exist_ok=True)
    sessions = draw_sessions(fam, seed, groups)
    plan = np.random.default_rng(seed).random(n)  # as Generator.choice draws its plan of kinds
    kinds = list(KINDS)
    rows = []
    for i in range(n):
        session = sessions[i % len(sessions)]
        kind = kinds[int(session.kind_cdf.searchsorted(plan[i], side="right"))]
        rng, xrng = np.random.default_rng([seed, i]), np.random.default_rng([seed, i, EXTRA_STREAM])
        frame, params = render_frame(rng, size, kind, session, xrng)
        rel = f"{params['label']}/frame_{i:05d}.tif"
        tifffile.imwrite(out / rel, frame)
        rows.append({"path": rel, "group": session.name, "seed": seed, **params, "family": fam.name,
                     **session_row(session)})
    _write_csv(out / "labels.csv", rows, CSV_FIELDS if legacy else CSV_FIELDS + FAMILY_FIELDS)
    return out / "labels.csv"


def generate_pool(out: str | Path, families: list[str], n: int = 400, size: int = 128, seed: int = 0,
                  groups: int | None = None, positive_rate: float | None = None, rate_spread: float | None = None) -> Path:
    """Several families in one data set: family i (of k) gets n // k frames and seed + i in OUT/<family>/, and
    OUT/labels.csv lists them all, each session named `<family>-<session>`, so a grouped split keeps a family's
    sessions apart as it keeps any session. What `make pretrained` learns from: sessions of every kind at once."""
    if len(set(families)) != len(families):
        raise NasError(f"--family {','.join(families)}: a family is named twice")
    for name in families:
        catalog.family(name, positive_rate, rate_spread)  # every name checked before any frame is drawn
    if n < 2 * len(families):
        raise NasError(f"--n {n}: at least 2 frames a family are needed ({len(families)} families)")
    out, rows = Path(out), []
    for i, name in enumerate(families):
        part = generate(out / name, n // len(families), size, seed + i, groups, name, positive_rate, rate_spread)
        with part.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append(row | {"path": f"{name}/{row['path']}", "group": f"{name}-{row['group']}", "family": name})
    _write_csv(out / "labels.csv", rows, CSV_FIELDS + FAMILY_FIELDS)
    return out / "labels.csv"


def _write_csv(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
