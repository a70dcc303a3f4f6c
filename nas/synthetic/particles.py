"""Particles: shape, composition, projected thickness and HAADF signal (Z-contrast: Z^1.7 per unit thickness).

The first four shapes are the base demo data's; the others (families `shapes`, `sessions`) are appearances a
model chosen on base-like data never saw: irregular blobs, core-shell and Janus bimetallics, multiply
twinned (decahedral) crystals and hollow nanoshells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ELEMENTS = {"Au": 79, "Pt": 78, "Pd": 46, "Ag": 47, "Cu": 29, "Ni": 28, "Co": 27, "Fe": 26}
BASE_SHAPES = ("rounded", "faceted", "rod", "plate")
BASE_SHAPE_WEIGHTS = (0.35, 0.35, 0.15, 0.15)
NEW_SHAPES = ("blobby", "core_shell", "twinned", "janus", "hollow")
HEAVY = ("Au", "Pt", "Pd", "Ag")  # core-shell cores: the heavy core is what makes the shell visible


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
    detail: dict = field(default_factory=dict)  # shape-specific: second composition, core fraction, harmonics

    @property
    def contrast(self) -> float:
        """Sum of f_i * Z_i^1.7: HAADF intensity per unit projected thickness."""
        return _contrast(self.composition)

    @property
    def z_eff(self) -> float:
        return self.contrast ** (1 / 1.7)

    @property
    def second(self) -> dict[str, float]:
        """The other composition of a core-shell (the core) or Janus particle (the other half); else empty."""
        return self.detail.get("second", {})


def _contrast(composition: dict[str, float]) -> float:
    return sum(f * ELEMENTS[el] ** 1.7 for el, f in composition.items())


def _sphere(r: float, rho: np.ndarray, thickness: float) -> np.ndarray:
    return thickness * np.sqrt(np.clip(1 - (rho / r) ** 2, 0, None))


def thickness(p: Particle, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Projected thickness (nm) of one particle on the grid (xx may be scan-distorted coordinates)."""
    c, s = np.cos(p.angle), np.sin(p.angle)
    u = (xx - p.cx) * c + (yy - p.cy) * s
    v = -(xx - p.cx) * s + (yy - p.cy) * c
    r = p.radius
    if p.shape in ("rounded", "core_shell", "janus"):
        q = 1 - (u / r) ** 2 - (v / (r * p.aspect)) ** 2
        return p.thickness_nm * np.sqrt(np.clip(q, 0, None))
    if p.shape == "rod":
        half = r * (1 - 1 / p.aspect)  # r is the half length incl. caps; width radius = r / aspect
        w = r / p.aspect
        d = np.hypot(np.clip(np.abs(u) - half, 0, None), v)
        return p.thickness_nm * np.sqrt(np.clip(1 - (d / w) ** 2, 0, None))
    if p.shape == "blobby":  # polar radius modulated by low harmonics, scaled so it never exceeds r
        theta, rho = np.arctan2(v, u), np.hypot(u, v)
        wobble = sum(a * np.cos(m * theta + phi) for m, a, phi in p.detail["harmonics"])
        total = sum(abs(a) for _, a, _ in p.detail["harmonics"])
        edge = r * (1 + wobble) / (1 + total)
        return p.thickness_nm * np.sqrt(np.clip(1 - (rho / edge) ** 2, 0, None))
    if p.shape == "hollow":  # a nanoshell: a sphere minus its cavity, so the rim is brighter than the centre
        rho, inner = np.hypot(u, v), p.detail["cavity"]
        return _sphere(r, rho, p.thickness_nm) - _sphere(inner * r, rho, inner * p.thickness_nm)
    # faceted crystal, decahedral twin or thin plate: a regular polygon, flat top with tapered edges
    apothem = r * np.cos(np.pi / p.sides)
    edge = np.full(u.shape, np.inf)
    for k in range(p.sides):
        phi = 2 * np.pi * k / p.sides
        edge = np.minimum(edge, apothem - (u * np.cos(phi) + v * np.sin(phi)))
    taper = np.clip(edge / max(apothem * 0.35, 1e-6), 0, 1)
    return p.thickness_nm * taper


def signal(p: Particle, t: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """HAADF signal of one particle given its thickness map t: contrast x thickness, per region of the particle."""
    if p.shape == "core_shell":
        rho = np.hypot(xx - p.cx, yy - p.cy)
        frac = p.detail["core_fraction"]
        core = np.minimum(_sphere(frac * p.radius, rho, frac * p.thickness_nm), t)
        return p.contrast * (t - core) + _contrast(p.second) * core
    if p.shape == "janus":  # two halves of other compositions, meeting along a line through the centre
        across = (xx - p.cx) * np.cos(p.angle) + (yy - p.cy) * np.sin(p.angle)
        w = 1 / (1 + np.exp(-np.clip(across / 0.7, -50, 50)))
        return t * (p.contrast * w + _contrast(p.second) * (1 - w))
    if p.shape == "twinned":  # five twin segments; channelling makes their brightness differ a little
        theta = np.mod(np.arctan2(yy - p.cy, xx - p.cx) - p.angle, 2 * np.pi)
        sector = np.minimum((theta / (2 * np.pi / 5)).astype(int), 4)
        return p.contrast * t * (1 + np.asarray(p.detail["sectors"])[sector])
    return p.contrast * t


def draw_particle(rng: np.random.Generator, *, cx: float, cy: float, radius: float,
                  shapes: tuple[str, ...] = BASE_SHAPES, weights: tuple[float, ...] = BASE_SHAPE_WEIGHTS,
                  xrng: np.random.Generator | None = None) -> Particle:
    """A random particle. Draws from `rng` exactly as the base demo data always did; the details of the newer
    shapes come from `xrng`, a stream of their own, so base frames stay byte-identical."""
    shape = rng.choice(shapes, p=weights)
    n_el = rng.integers(1, 4)
    els = rng.choice(list(ELEMENTS), size=n_el, replace=False)
    fractions = rng.dirichlet(np.ones(n_el))
    diameter_nm = rng.uniform(3, 20)
    thickness_nm = diameter_nm * (0.25 if shape == "plate" else 1.0)
    p = Particle(
        shape=str(shape), cx=cx, cy=cy, radius=radius, angle=rng.uniform(0, np.pi),
        composition={str(e): float(f) for e, f in zip(els, fractions, strict=True)}, thickness_nm=thickness_nm,
        sides=int(rng.choice([3, 4, 5, 6, 8]) if shape != "plate" else rng.choice([3, 6])),
        aspect=float(rng.uniform(0.75, 1.0) if shape == "rounded" else rng.uniform(2.0, 4.0)),
    )
    if p.shape in NEW_SHAPES:
        _new_shape_detail(p, xrng if xrng is not None else rng)
    return p


def _new_shape_detail(p: Particle, rng: np.random.Generator) -> None:
    p.aspect = 1.0
    if p.shape == "blobby":
        p.detail["harmonics"] = [(m, rng.uniform(0.04, 0.16), rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4, 5)]
    elif p.shape == "core_shell":
        main = max(p.composition, key=p.composition.get)
        p.detail["second"] = {str(rng.choice([e for e in HEAVY if e != main])): 1.0}
        p.detail["core_fraction"] = rng.uniform(0.35, 0.75)
        p.composition = {str(rng.choice(["Fe", "Co", "Ni", "Cu"])): 1.0}  # a light oxide-like shell
    elif p.shape == "janus":
        p.detail["second"] = {str(rng.choice([e for e in ELEMENTS if e not in p.composition])): 1.0}
    elif p.shape == "twinned":
        p.sides = 5
        p.detail["sectors"] = list(rng.choice([-1, 1], size=5) * rng.uniform(0.05, 0.15, size=5))
    elif p.shape == "hollow":
        p.detail["cavity"] = rng.uniform(0.55, 0.85)
