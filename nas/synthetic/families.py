"""Families of demo data: each a coherent kind of microscope data, and the sessions (groups) drawn from it.

A family is a set of ranges; each session (a chip, a day at the microscope) draws its own settings from them
and keeps them for all its frames, as a real session shares its magnification, dose, detector settings,
support and drift. A grouped split then puts unseen sessions in val and test. The ranges are the family's
claim about what varies; tests check each family's knobs do what they claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nas.synthetic.particles import BASE_SHAPE_WEIGHTS, BASE_SHAPES

KINDS = {  # share of frames in the base data; "single" is the positive class
    "single": 0.50,
    "empty": 0.09,
    "multiple": 0.11,
    "aggregate": 0.09,
    "edge_cut": 0.10,
    "defocused": 0.06,
    "drift": 0.05,
}
# Limits that decide the base data's label, in pixels of a 128 px frame (scaled with the frame size).
MAX_FOCUS_SIGMA = 1.8  # probe blur beyond this is "defocused"
MAX_DRIFT = 3.5  # smear length beyond this is "drift"
MAX_CUT_FRACTION = 0.02  # more of the particle's mass outside the frame is "cut by the edge"
LEGACY_STREAM, SESSION_STREAM = 1_000_003, 2_000_003  # seeds of the per-session random streams


@dataclass(frozen=True)
class Span:
    """A range a session draws a setting from (uniformly, or log-uniformly)."""

    lo: float
    hi: float
    log: bool = False

    def draw(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.lo), np.log(self.hi))))
        return float(rng.uniform(self.lo, self.hi))


def fixed(value: float) -> Span:
    return Span(value, value)


@dataclass(frozen=True)
class Family:
    """What varies between the sessions of one kind of data. Defaults are the base demo data's."""

    name: str
    about: str
    groups: int = 8
    positive_rate: float = 0.5  # share of frames drawn as one whole, in-focus particle
    rate_spread: float = 0.0  # log-normal sigma of that share between sessions (0: every session alike)
    # detector and dose, drawn in this order from the session's legacy stream (base frames stay byte-identical)
    offset: Span = Span(300, 3000)
    gain: Span = Span(1.0, 4.0)
    read_noise: Span = Span(3, 25)
    line_noise: Span = Span(0, 15)
    support_nm: Span = Span(8, 25)
    dose: Span = Span(0.08, 0.5)
    offset_of_full_scale: bool = False  # offset drawn as a fraction of the ADC's full scale
    bits: tuple[int, ...] = (16,)  # ADC depth: values clip (saturate) at 2^bits - 1
    knee: Span | None = None  # compressive response: knee x full scale, in ADC units (None: linear)
    afterglow: Span = fixed(0.0)  # detector decay length along the fast scan, px of a 128 px frame
    scale: Span = fixed(1.0)  # magnification: particle size (and support texture) in px, relative to base
    drift_scale: Span = fixed(1.0)  # multiplies the in-focus frames' drift smear
    drift_direction: bool = False  # drift along one direction per session (thermal drift) instead of any
    shear: Span = fixed(0.0)  # scan distortion: px of fast-scan shift per scan line (drift during the scan)
    jitter: Span = fixed(0.0)  # random per-line fast-scan shift (px of a 128 px frame, standard deviation)
    hum: Span = fixed(0.0)  # sinusoidal per-line shift (mains interference), amplitude in px of 128
    shapes: tuple[tuple[str, float], ...] = tuple(zip(BASE_SHAPES, BASE_SHAPE_WEIGHTS, strict=True))
    shape_mix: float = 0.0  # Dirichlet concentration of each session's shape weights (0: the family's)
    supports: tuple[tuple[str, float], ...] = (("carbon", 1.0),)  # one per session
    contamination: tuple[tuple[str, float], ...] = (("specks", 1.0),)  # one per session
    focus_limit: Span = fixed(MAX_FOCUS_SIGMA)
    drift_limit: Span = fixed(MAX_DRIFT)
    cut_limit: Span = fixed(MAX_CUT_FRACTION)
    borderline: Span = fixed(0.3)  # share of frames drawn close to the label limits


@dataclass
class Session:
    """One chip/session: the settings its frames share."""

    name: str
    offset: float
    gain: float
    read_noise: float
    line_noise: float
    support_nm: float
    dose: float
    scale: float = 1.0
    bits: int = 16
    knee: float = 0.0  # 0: linear
    afterglow: float = 0.0
    drift_scale: float = 1.0
    drift_angle: float | None = None
    shear: float = 0.0
    jitter: float = 0.0
    hum: float = 0.0
    hum_period: float = 16.0
    support: str = "carbon"
    contamination: str = "specks"
    lattice_px: float = 0.0
    shapes: tuple[str, ...] = BASE_SHAPES
    shape_weights: tuple[float, ...] = BASE_SHAPE_WEIGHTS
    positive_share: float = 0.5
    focus_limit: float = MAX_FOCUS_SIGMA
    drift_limit: float = MAX_DRIFT
    cut_limit: float = MAX_CUT_FRACTION
    borderline: float = 0.3
    kind_cdf: np.ndarray = field(default_factory=lambda: kind_cdf(0.5))

    @property
    def full_scale(self) -> int:
        return 2**self.bits - 1


def kind_cdf(positive_share: float) -> np.ndarray:
    """Cumulative shares of the frame kinds: `single` at the given share, the negatives in base proportions.
    Computed as numpy's Generator.choice computes it, so base data keeps its exact plan of kinds."""
    scale = (1 - positive_share) / (1 - KINDS["single"])
    p = np.array([positive_share if k == "single" else v * scale for k, v in KINDS.items()])
    cdf = p.cumsum()
    return cdf / cdf[-1]


def _pick(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*options, strict=True)
    return str(rng.choice(names, p=np.array(weights) / sum(weights)))


def draw_sessions(fam: Family, seed: int, groups: int) -> list[Session]:
    """The family's sessions for a seed: legacy settings from the legacy stream, the rest from another."""
    sessions = [_draw_session(fam, seed, g) for g in range(groups)]
    shares = np.array([s.positive_share for s in sessions])
    shares = np.clip(shares * fam.positive_rate / shares.mean(), 0.02, 0.9)  # the family's rate on average
    for s, share in zip(sessions, shares, strict=True):
        s.positive_share = float(share)
        s.kind_cdf = kind_cdf(s.positive_share)
    return sessions


def _draw_session(fam: Family, seed: int, g: int) -> Session:
    legacy = np.random.default_rng([seed, LEGACY_STREAM, g])
    s = Session(name=f"chip{g:02d}", offset=fam.offset.draw(legacy), gain=fam.gain.draw(legacy),
                read_noise=fam.read_noise.draw(legacy), line_noise=fam.line_noise.draw(legacy),
                support_nm=fam.support_nm.draw(legacy), dose=fam.dose.draw(legacy))
    rng = np.random.default_rng([seed, SESSION_STREAM, g])
    s.bits = int(rng.choice(fam.bits))
    if fam.offset_of_full_scale:
        s.offset *= s.full_scale
    s.knee = fam.knee.draw(rng) * s.full_scale if fam.knee else 0.0
    s.afterglow, s.scale, s.drift_scale = fam.afterglow.draw(rng), fam.scale.draw(rng), fam.drift_scale.draw(rng)
    s.drift_angle = float(rng.uniform(0, np.pi)) if fam.drift_direction else None
    s.shear, s.jitter, s.hum = fam.shear.draw(rng), fam.jitter.draw(rng), fam.hum.draw(rng)
    s.hum_period = float(rng.uniform(6, 40))  # scan lines per cycle: line time against the mains period
    s.support, s.contamination = _pick(rng, fam.supports), _pick(rng, fam.contamination)
    s.lattice_px = float(rng.uniform(2.5, 6.0)) if s.support == "lattice" else 0.0
    names, weights = zip(*fam.shapes, strict=True)
    w = np.array(weights) / sum(weights)
    if fam.shape_mix > 0:  # sessions favour different shapes, as synthesis conditions differ between chips
        w = rng.dirichlet(fam.shape_mix * w * len(w) + 1e-3)
    s.shapes, s.shape_weights = tuple(names), tuple(float(x) for x in w)
    s.positive_share = float(np.exp(rng.normal(0, fam.rate_spread))) if fam.rate_spread else 1.0
    s.focus_limit, s.drift_limit = fam.focus_limit.draw(rng), fam.drift_limit.draw(rng)
    s.cut_limit, s.borderline = fam.cut_limit.draw(rng), fam.borderline.draw(rng)
    return s

