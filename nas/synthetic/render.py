"""One frame: place the particles its kind asks for, render specimen and instrument, label what was rendered.

Each frame is rendered on a padded canvas and cropped, so a particle cut by the frame edge is cut for real:
  signal   = Z_support^1.7 * t_support(x, y) + sum_p Z_p^1.7 * t_p(x, y)     (HAADF Z-contrast)
  blurred  = signal * probe(sigma) * drift(length, angle)                     (one FFT)
  counts   = Poisson(dose * blurred)                                         (shot noise)
  frame    = offset + gain * counts + read noise + per-scan-line offsets     (detector), as uint16
The label compares what was rendered (particle count, mass outside the frame, blur, smear) with the
session's limits; the kind only says what was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.synthetic import instrument, scene
from nas.synthetic.families import MAX_CUT_FRACTION, Session
from nas.synthetic.particles import Particle, draw_particle, signal, thickness


@dataclass
class Canvas:
    """The padded canvas of one frame and the draws every kind shares."""

    size: int
    k: float  # pixels of this frame per pixel of a 128 px frame
    pad: int
    n: int
    borderline: bool
    r_lo: float
    r_hi: float
    radius: float
    sigma: float
    drift: float


def _canvas(rng: np.random.Generator, size: int, s: Session) -> Canvas:
    k = size / 128.0
    pad = int(np.ceil(0.45 * size))
    borderline = bool(rng.random() < s.borderline)
    # magnification scales particle sizes; capped so one whole particle always fits with room to spare
    r_lo, r_hi = min(0.06 * s.scale, 0.2) * size, min(0.17 * s.scale, 0.3) * size
    radius = rng.uniform(r_lo * (0.8 if borderline else 1.0), r_hi)
    sigma = rng.uniform(0.5, _sharp(s)) * k
    drift = rng.uniform(0, _steady(s)) * k * s.drift_scale
    return Canvas(size, k, pad, size + 2 * pad, borderline, r_lo, r_hi, radius, sigma, drift)


def _sharp(s: Session) -> float:
    """Upper end of an in-focus frame's blur: 1.2 px under the base limit of 1.8, kept as far under stricter ones."""
    return min(1.2, 0.67 * s.focus_limit)


def _steady(s: Session) -> float:
    """Upper end of a steady frame's smear: 1.5 px under the base limit of 3.5, kept as far under stricter ones."""
    return min(1.5, 0.43 * s.drift_limit)


def _depth_for(cut: float) -> float:
    """Depth (fraction of the diameter) of a sphere outside the frame that puts `cut` of its mass outside:
    a cap of height h = 2 r d holds d^2 (3 - 2 d) of the volume."""
    d = np.linspace(0, 1, 20001)
    return float(np.interp(cut, d**2 * (3 - 2 * d), d))


def _single(rng, c: Canvas, s: Session, p_draw) -> list[Particle]:
    k, pad, size, radius = c.k, c.pad, c.size, c.radius
    inner_lo, inner_hi = pad + radius + 2 * k, pad + size - radius - 2 * k
    if c.borderline:
        which = rng.integers(3)
        if which == 0:
            c.sigma = rng.uniform(_sharp(s), s.focus_limit * 0.97) * k
        elif which == 1:
            c.drift = rng.uniform(_steady(s), s.drift_limit * 0.95) * k
        elif s.cut_limit > MAX_CUT_FRACTION:  # a looser edge rule: cut, but by less than the limit
            depth = _depth_for(rng.uniform(0, 0.9) * s.cut_limit)
            x, y = pad + radius * (1 - 2 * depth), rng.uniform(inner_lo, inner_hi)
            return [p_draw(pad + size - (x - pad) if rng.random() < 0.5 else x, y, radius)]
        else:  # close to the edge but whole
            inner_lo, inner_hi = pad + radius + 0.5 * k, pad + radius + 3 * k
    x, y = rng.uniform(inner_lo, inner_hi, size=2)
    if rng.random() < 0.5:
        x = pad + size - (x - pad)  # near either edge, not only the top-left
    return [p_draw(x, y, radius)]


def _unsharp(rng, c: Canvas, s: Session, kind: str, p_draw) -> list[Particle]:
    k, pad, size = c.k, c.pad, c.size
    x, y = rng.uniform(pad + c.radius + 2 * k, pad + size - c.radius - 2 * k, size=2)
    particles = [p_draw(x, y, c.radius)]
    if kind == "defocused":
        lo = s.focus_limit * 1.05
        c.sigma = rng.uniform(lo, lo * 1.4 if c.borderline else max(6.0, lo * 1.5)) * k
    else:
        lo = s.drift_limit * 1.1
        c.drift = rng.uniform(lo, lo * 1.5 if c.borderline else max(22.0, lo * 1.5)) * k
    return particles


def _edge_cut(rng, c: Canvas, s: Session, p_draw) -> list[Particle]:
    pad, size, radius = c.pad, c.size, c.radius
    p = p_draw(0, 0, radius)
    stretch = _depth_for(s.cut_limit) / _depth_for(MAX_CUT_FRACTION)  # 1.0 under the base limit
    depth = rng.uniform(0.15, 0.35) if c.borderline else rng.uniform(0.35, 0.9)  # of the diameter, outside
    depth = min(depth * stretch, 0.9)
    along = rng.uniform(pad + radius, pad + size - radius)
    side = rng.integers(4)
    across = pad + radius * (1 - 2 * depth)  # centre so that `depth` of its width lies outside
    coords = [(across, along), (pad + size - (across - pad), along), (along, across), (along, pad + size - (across - pad))][side]
    p.cx, p.cy = coords
    return [p]


def _place_apart(rng, taken: list[tuple[float, float, float]], lo: float, hi: float, radius: float, gap: float):
    for _ in range(200):
        x, y = rng.uniform(lo, hi, size=2)
        if all(np.hypot(x - a, y - b) > radius + r + gap for a, b, r in taken):
            return x, y
    return None


def _multiple(rng, c: Canvas, p_draw) -> list[Particle]:
    k, pad, size = c.k, c.pad, c.size
    count = int(rng.integers(2, 5))
    taken: list[tuple[float, float, float]] = []
    particles = []
    for i in range(count):
        r = c.radius if i == 0 else rng.uniform(c.r_lo * (0.7 if c.borderline else 1.0), c.r_hi) * (0.8 if count > 2 else 1.0)
        spot = _place_apart(rng, taken, pad + r + 2 * k, pad + size - r - 2 * k, r, 3 * k)
        if spot is None:
            break
        taken.append((*spot, r))
        particles.append(p_draw(spot[0], spot[1], r))
    return particles


def _aggregate(rng, c: Canvas, p_draw) -> list[Particle]:
    count = int(rng.integers(2, 6))
    r0 = c.radius * 0.8
    room = min(2.2 * r0, 0.45 * c.size)  # at high magnification a cluster may outgrow the frame: still an aggregate
    x, y = rng.uniform(c.pad + room, c.pad + c.size - room, size=2)
    particles = [p_draw(x, y, r0)]
    for _ in range(count - 1):
        base = particles[rng.integers(len(particles))]
        r = rng.uniform(0.5, 1.0) * r0
        ang = rng.uniform(0, 2 * np.pi)
        dist = (base.radius + r) * rng.uniform(0.6, 1.0)
        particles.append(p_draw(base.cx + dist * np.cos(ang), base.cy + dist * np.sin(ang), r))
    return particles


def _place(rng, xrng, c: Canvas, s: Session, kind: str) -> list[Particle]:
    def p_draw(cx: float, cy: float, radius: float) -> Particle:
        return draw_particle(rng, cx=cx, cy=cy, radius=radius, shapes=s.shapes, weights=s.shape_weights, xrng=xrng)

    if kind == "single":
        return _single(rng, c, s, p_draw)
    if kind in ("defocused", "drift"):
        return _unsharp(rng, c, s, kind, p_draw)
    if kind == "edge_cut":
        return _edge_cut(rng, c, s, p_draw)
    if kind == "multiple":
        return _multiple(rng, c, p_draw)
    if kind == "aggregate":
        return _aggregate(rng, c, p_draw)
    if kind != "empty":
        raise ValueError(f"unknown frame kind {kind!r}")
    return []


def _specimen(rng, xrng, c: Canvas, s: Session, particles: list[Particle]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """HAADF signal on the canvas, and each particle's (total, inside-the-frame) mass as the scan saw it."""
    yy, xx = np.mgrid[0 : c.n, 0 : c.n].astype(np.float64)
    shifts = instrument.line_shifts(xrng, s, c.n, c.k)
    xs = xx if shifts is None else xx - shifts[:, None]  # where each pixel's probe was on the specimen
    if s.support == "carbon" and s.contamination == "specks":  # the base data's arithmetic, kept exact
        t_support, z = scene.carbon(rng, c.n, s.support_nm, s.scale), scene.Z_SUPPORT
        signal_map = scene.Z_SUPPORT**1.7 * (t_support + scene.specks(rng, xs, yy, c.n, s.scale))
    else:
        t_support, z = scene.support(rng, s.support, c.n, c.size, s.support_nm, s.scale, xs, yy, s.lattice_px)
        dirt = scene.contamination(rng, s.contamination, c.n, c.size, s.scale, xs, yy)
        signal_map = z**1.7 * t_support + scene.Z_SUPPORT**1.7 * dirt
    masses = []
    inner = slice(c.pad, c.pad + c.size)
    for p in particles:
        t = thickness(p, xs, yy)
        masses.append((t.sum(), t[inner, inner].sum()))
        signal_map += signal(p, t, xs, yy)
    return signal_map, masses


def label(n_particles: int, kind: str, cut: float, sigma128: float, drift128: float, s: Session) -> tuple[str, str]:
    """The label, and the reason for a negative, from what was rendered, whatever kind was asked for."""
    if kind == "aggregate":
        return "negative", "aggregate"
    if n_particles != 1:
        return "negative", "count"
    if cut > s.cut_limit:
        return "negative", "cut"
    if sigma128 > s.focus_limit:
        return "negative", "defocus"
    if drift128 > s.drift_limit:
        return "negative", "drift"
    return "positive", "ok"


def render_frame(rng: np.random.Generator, size: int, kind: str, session: Session,
                 xrng: np.random.Generator | None = None) -> tuple[np.ndarray, dict]:
    """Render one uint16 frame of the given kind; returns the frame and its generating parameters.
    `rng` drives everything the base data draws; `xrng` (default: spawned from rng, which leaves rng's stream
    as it was) what the families add."""
    xrng = xrng if xrng is not None else rng.spawn(1)[0]
    c = _canvas(rng, size, session)
    particles = _place(rng, xrng, c, session, kind)
    signal_map, masses = _specimen(rng, xrng, c, session, particles)
    drift_angle = rng.uniform(0, np.pi)
    if session.drift_angle is not None:  # thermal drift keeps its direction through a session
        drift_angle = session.drift_angle + xrng.normal(0, 0.3)
    blurred = np.real(np.fft.ifft2(np.fft.fft2(signal_map) * instrument.transfer(c.n, c.sigma, c.drift, drift_angle)))
    crop = np.clip(blurred[c.pad : c.pad + c.size, c.pad : c.pad + c.size], 0, None)
    frame = instrument.detect(rng, crop, session, c.k)
    cut = max((1 - inside / total for total, inside in masses if total > 0), default=0.0)
    return frame, _params(kind, particles, c, session, cut)


def _params(kind: str, particles: list[Particle], c: Canvas, s: Session, cut: float) -> dict:
    lab, reason = label(len(particles), kind, cut, c.sigma / c.k, c.drift / c.k, s)
    main = particles[0] if particles else None

    def comp(composition: dict[str, float]) -> str:
        return "+".join(f"{e}{f:.2f}" for e, f in composition.items())

    return {
        "kind": kind, "shape": main.shape if main else "", "n_particles": len(particles),
        "diameter_px": round(2 * main.radius, 2) if main else 0.0,
        "composition": comp(main.composition) if main else "",
        "z_eff": round(main.z_eff, 1) if main else 0.0, "blur_sigma_px": round(c.sigma, 3),
        "drift_px": round(c.drift, 3), "cut_fraction": round(cut, 4), "dose": round(s.dose, 4),
        "borderline": c.borderline, "label": lab, "reason": reason,
        "composition2": comp(main.second) if main else "",
    }
