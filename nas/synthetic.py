"""A HAADF-STEM megalibrary simulator: the built-in demo data.

Each frame is rendered on a padded canvas and cropped, so a particle cut by the frame edge is cut for real:
  signal   = Z_support^1.7 * t_support(x, y) + sum_p Z_p^1.7 * t_p(x, y)     (HAADF Z-contrast)
  blurred  = signal * probe(sigma) * drift(length, angle)                     (one FFT)
  counts   = Poisson(dose * blurred)                                         (shot noise)
  frame    = offset + gain * counts + read noise + per-scan-line offsets     (detector), as uint16
A frame is positive when it shows exactly one whole, in-focus, unsmeared particle. Negatives are empty
fields, several particles, aggregates, particles cut by the frame edge, defocused or drift-smeared frames.
Labels follow from what was rendered (mass outside the frame, blur and smear against stated limits), and
a share of frames is drawn close to those limits so the task is not trivially separable.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

ELEMENTS = {"Au": 79, "Pt": 78, "Pd": 46, "Ag": 47, "Cu": 29, "Ni": 28, "Co": 27, "Fe": 26}
Z_SUPPORT = 6  # amorphous carbon
SHAPES = ("rounded", "faceted", "rod", "plate")

# Limits that decide the label, in pixels of a 128 px frame (scaled with the frame size).
MAX_FOCUS_SIGMA = 1.8  # probe blur beyond this is "defocused"
MAX_DRIFT = 3.5  # smear length beyond this is "drift"
MAX_CUT_FRACTION = 0.02  # more of the particle's mass outside the frame is "cut by the edge"

KINDS = {  # share of frames; "single" is the positive class
    "single": 0.50,
    "empty": 0.09,
    "multiple": 0.11,
    "aggregate": 0.09,
    "edge_cut": 0.10,
    "defocused": 0.06,
    "drift": 0.05,
}
CSV_FIELDS = (
    "path", "label", "group", "kind", "shape", "n_particles", "diameter_px", "composition", "z_eff",
    "blur_sigma_px", "drift_px", "cut_fraction", "dose", "borderline", "seed",
)


@dataclass
class Particle:
    shape: str
    cx: float
    cy: float
    radius: float  # circumradius, px
    angle: float
    composition: dict[str, float]
    thickness_nm: float
    sides: int = 6
    aspect: float = 1.0

    @property
    def contrast(self) -> float:
        """Sum of f_i * Z_i^1.7: HAADF intensity per unit projected thickness."""
        return sum(f * ELEMENTS[el] ** 1.7 for el, f in self.composition.items())

    @property
    def z_eff(self) -> float:
        return self.contrast ** (1 / 1.7)


def _thickness(p: Particle, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Projected thickness (nm) of one particle on the grid."""
    c, s = np.cos(p.angle), np.sin(p.angle)
    u = (xx - p.cx) * c + (yy - p.cy) * s
    v = -(xx - p.cx) * s + (yy - p.cy) * c
    r = p.radius
    if p.shape == "rounded":
        q = 1 - (u / r) ** 2 - (v / (r * p.aspect)) ** 2
        return p.thickness_nm * np.sqrt(np.clip(q, 0, None))
    if p.shape == "rod":
        half = r * (1 - 1 / p.aspect)  # r is the half length incl. caps; width radius = r / aspect
        w = r / p.aspect
        d = np.hypot(np.clip(np.abs(u) - half, 0, None), v)
        return p.thickness_nm * np.sqrt(np.clip(1 - (d / w) ** 2, 0, None))
    # faceted crystal or thin plate: a regular polygon, flat top with tapered edges
    apothem = r * np.cos(np.pi / p.sides)
    edge = np.full(u.shape, np.inf)
    for k in range(p.sides):
        phi = 2 * np.pi * k / p.sides
        edge = np.minimum(edge, apothem - (u * np.cos(phi) + v * np.sin(phi)))
    taper = np.clip(edge / max(apothem * 0.35, 1e-6), 0, 1)
    return p.thickness_nm * taper


def _particle(rng: np.random.Generator, *, cx: float, cy: float, radius: float, shape: str | None = None) -> Particle:
    shape = shape or rng.choice(SHAPES, p=[0.35, 0.35, 0.15, 0.15])
    n_el = rng.integers(1, 4)
    els = rng.choice(list(ELEMENTS), size=n_el, replace=False)
    fractions = rng.dirichlet(np.ones(n_el))
    diameter_nm = rng.uniform(3, 20)
    thickness = diameter_nm * (0.25 if shape == "plate" else 1.0)
    return Particle(
        shape=str(shape), cx=cx, cy=cy, radius=radius, angle=rng.uniform(0, np.pi),
        composition={str(e): float(f) for e, f in zip(els, fractions, strict=True)}, thickness_nm=thickness,
        sides=int(rng.choice([3, 4, 5, 6, 8]) if shape != "plate" else rng.choice([3, 6])),
        aspect=float(rng.uniform(0.75, 1.0) if shape == "rounded" else rng.uniform(2.0, 4.0)),
    )


def _support(rng: np.random.Generator, n: int, mean_nm: float) -> np.ndarray:
    """Amorphous carbon: slow thickness variation plus a fine speckle texture."""
    f = np.fft.fftfreq(n)
    fr = np.hypot(f[:, None], f[None, :])
    noise = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    slow = np.real(np.fft.ifft2(noise * np.exp(-((fr / 0.02) ** 2))))
    fine = np.real(np.fft.ifft2(noise[::-1] * np.exp(-(((fr - 0.18) / 0.08) ** 2))))
    slow = slow / (slow.std() + 1e-12)
    fine = fine / (fine.std() + 1e-12)
    return np.clip(mean_nm * (1 + 0.12 * slow + 0.10 * fine), 0.1, None)


def _specks(rng: np.random.Generator, xx, yy, n: int) -> np.ndarray:
    """Hydrocarbon contamination: faint low-Z blobs, a nuisance that is not a particle."""
    out = np.zeros_like(xx)
    for _ in range(rng.poisson(1.5)):
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(1.0, 3.0)
        out += rng.uniform(2, 8) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return out


def _transfer(n: int, sigma: float, drift: float, angle: float) -> np.ndarray:
    """Fourier transfer function of a Gaussian probe and a linear drift smear."""
    f = np.fft.fftfreq(n)
    fy, fx = f[:, None], f[None, :]
    gauss = np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2))
    smear = np.sinc(drift * (fx * np.cos(angle) + fy * np.sin(angle)))
    return gauss * smear


def _place_apart(rng, taken: list[tuple[float, float, float]], lo: float, hi: float, radius: float, gap: float):
    for _ in range(200):
        x, y = rng.uniform(lo, hi, size=2)
        if all(np.hypot(x - a, y - b) > radius + r + gap for a, b, r in taken):
            return x, y
    return None


@dataclass
class Group:
    """One chip/session: detector and support settings shared by its frames."""

    name: str
    offset: float
    gain: float
    read_noise: float
    line_noise: float
    support_nm: float
    dose: float


def _group(rng: np.random.Generator, index: int) -> Group:
    return Group(
        name=f"chip{index:02d}", offset=rng.uniform(300, 3000), gain=rng.uniform(1.0, 4.0),
        read_noise=rng.uniform(3, 25), line_noise=rng.uniform(0, 15), support_nm=rng.uniform(8, 25),
        dose=rng.uniform(0.08, 0.5),
    )


def render_frame(rng: np.random.Generator, size: int, kind: str, group: Group) -> tuple[np.ndarray, dict]:
    """Render one uint16 frame of the given kind; returns the frame and its generating parameters."""
    k = size / 128.0
    pad = int(np.ceil(0.45 * size))
    n = size + 2 * pad
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    borderline = bool(rng.random() < 0.3)
    r_lo, r_hi = 0.06 * size, 0.17 * size
    radius = rng.uniform(r_lo * (0.8 if borderline else 1.0), r_hi)
    sigma = rng.uniform(0.5, 1.2) * k
    drift = rng.uniform(0, 1.5) * k
    particles: list[Particle] = []
    inner_lo, inner_hi = pad + radius + 2 * k, pad + size - radius - 2 * k

    if kind == "single":
        if borderline:
            which = rng.integers(3)
            if which == 0:
                sigma = rng.uniform(1.2, MAX_FOCUS_SIGMA * 0.97) * k
            elif which == 1:
                drift = rng.uniform(1.5, MAX_DRIFT * 0.95) * k
            else:  # close to the edge but whole
                inner_lo, inner_hi = pad + radius + 0.5 * k, pad + radius + 3 * k
        x, y = rng.uniform(inner_lo, inner_hi, size=2)
        if rng.random() < 0.5:
            x = pad + size - (x - pad)  # near either edge, not only the top-left
        particles.append(_particle(rng, cx=x, cy=y, radius=radius))
    elif kind in ("defocused", "drift"):
        x, y = rng.uniform(pad + radius + 2 * k, pad + size - radius - 2 * k, size=2)
        particles.append(_particle(rng, cx=x, cy=y, radius=radius))
        if kind == "defocused":
            lo = MAX_FOCUS_SIGMA * 1.05
            sigma = rng.uniform(lo, lo * 1.4 if borderline else 6.0) * k
        else:
            lo = MAX_DRIFT * 1.1
            drift = rng.uniform(lo, lo * 1.5 if borderline else 22.0) * k
    elif kind == "edge_cut":
        p = _particle(rng, cx=0, cy=0, radius=radius)
        depth = rng.uniform(0.15, 0.35) if borderline else rng.uniform(0.35, 0.9)  # of the radius, outside
        along = rng.uniform(pad + radius, pad + size - radius)
        side = rng.integers(4)
        across = pad + radius * (1 - 2 * depth)  # centre so that `depth` of its width lies outside
        coords = [(across, along), (pad + size - (across - pad), along), (along, across), (along, pad + size - (across - pad))][side]
        p.cx, p.cy = coords
        particles.append(p)
    elif kind == "multiple":
        count = int(rng.integers(2, 5))
        taken: list[tuple[float, float, float]] = []
        for i in range(count):
            r = radius if i == 0 else rng.uniform(r_lo * (0.7 if borderline else 1.0), r_hi) * (0.8 if count > 2 else 1.0)
            spot = _place_apart(rng, taken, pad + r + 2 * k, pad + size - r - 2 * k, r, 3 * k)
            if spot is None:
                break
            taken.append((*spot, r))
            particles.append(_particle(rng, cx=spot[0], cy=spot[1], radius=r))
    elif kind == "aggregate":
        count = int(rng.integers(2, 6))
        r0 = radius * 0.8
        x, y = rng.uniform(pad + 2.2 * r0, pad + size - 2.2 * r0, size=2)
        particles.append(_particle(rng, cx=x, cy=y, radius=r0))
        for _ in range(count - 1):
            base = particles[rng.integers(len(particles))]
            r = rng.uniform(0.5, 1.0) * r0
            ang = rng.uniform(0, 2 * np.pi)
            dist = (base.radius + r) * rng.uniform(0.6, 1.0)
            particles.append(_particle(rng, cx=base.cx + dist * np.cos(ang), cy=base.cy + dist * np.sin(ang), radius=r))
    elif kind != "empty":
        raise ValueError(f"unknown frame kind {kind!r}")

    support = _support(rng, n, group.support_nm)
    signal = Z_SUPPORT**1.7 * (support + _specks(rng, xx, yy, n))
    masses = []
    for p in particles:
        t = _thickness(p, xx, yy)
        masses.append((t.sum(), t[pad : pad + size, pad : pad + size].sum()))
        signal += p.contrast * t
    drift_angle = rng.uniform(0, np.pi)
    blurred = np.real(np.fft.ifft2(np.fft.fft2(signal) * _transfer(n, sigma, drift, drift_angle)))
    crop = np.clip(blurred[pad : pad + size, pad : pad + size], 0, None)
    counts = rng.poisson(crop * group.dose).astype(np.float64)
    frame = group.offset + group.gain * counts + rng.normal(0, group.read_noise, crop.shape)
    frame += rng.normal(0, group.line_noise, (size, 1))  # scan-line offsets
    frame = np.clip(np.round(frame), 0, 65535).astype(np.uint16)

    cut = max((1 - inside / total for total, inside in masses if total > 0), default=0.0)
    label = _label(len(particles), kind, cut, sigma / k, drift / k)
    main = particles[0] if particles else None
    params = {
        "kind": kind, "shape": main.shape if main else "", "n_particles": len(particles),
        "diameter_px": round(2 * main.radius, 2) if main else 0.0,
        "composition": "+".join(f"{e}{f:.2f}" for e, f in main.composition.items()) if main else "",
        "z_eff": round(main.z_eff, 1) if main else 0.0, "blur_sigma_px": round(sigma, 3),
        "drift_px": round(drift, 3), "cut_fraction": round(cut, 4), "dose": round(group.dose, 4),
        "borderline": borderline, "label": label,
    }
    return frame, params


def _label(n_particles: int, kind: str, cut: float, sigma128: float, drift128: float) -> str:
    """The label from what was rendered, whatever kind was asked for."""
    if kind == "aggregate" or n_particles != 1:
        return "negative"
    if cut > MAX_CUT_FRACTION or sigma128 > MAX_FOCUS_SIGMA or drift128 > MAX_DRIFT:
        return "negative"
    return "positive"


def generate(out: str | Path, n: int = 400, size: int = 128, seed: int = 0, groups: int = 8) -> Path:
    """Write n frames to OUT/positive and OUT/negative plus OUT/labels.csv; deterministic for a seed."""
    if n < 2:
        raise ValueError("n must be at least 2")
    if not 16 <= size <= 4096:
        raise ValueError("size must be between 16 and 4096 pixels")
    out = Path(out)
    for label in ("positive", "negative"):
        (out / label).mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(seed)
    chips = [_group(np.random.default_rng([seed, 1_000_003, g]), g) for g in range(max(1, groups))]
    kinds = list(KINDS)
    plan = master.choice(kinds, size=n, p=list(KINDS.values()))
    rows = []
    for i, kind in enumerate(plan):
        rng = np.random.default_rng([seed, i])
        chip = chips[i % len(chips)]
        frame, params = render_frame(rng, size, str(kind), chip)
        rel = f"{params['label']}/frame_{i:05d}.tif"
        tifffile.imwrite(out / rel, frame)
        rows.append({"path": rel, "group": chip.name, "seed": seed, **params})
    tmp = out / "labels.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "labels.csv")
    return out / "labels.csv"
