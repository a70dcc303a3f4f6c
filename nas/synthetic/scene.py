"""What lies under and around the particles: the support film and its contamination, as projected thickness.

Supports: amorphous carbon (the base data's), holey carbon (a hole edge crossing the frame, a thicker rim,
sometimes only vacuum), a crystalline support (lattice fringes, heavier than carbon) and a graphene-like film
(almost no background, few-layer steps, polymer residue). Contamination: hydrocarbon specks (base), a carbon
deposit left by an earlier, smaller scan window, or dense ligand/salt residue. Sizes scale with the session's
magnification (`scale`).
"""

from __future__ import annotations

import numpy as np

Z_SUPPORT = 6  # carbon
Z_LATTICE = 14  # a crystalline Si/SiN-like support: four times carbon's signal per nm
SUPPORTS = ("carbon", "holey", "lattice", "graphene")
CONTAMINATION = ("specks", "deposit", "residue", "none")


def carbon(rng: np.random.Generator, n: int, mean_nm: float, scale: float = 1.0) -> np.ndarray:
    """Amorphous carbon: slow thickness variation plus a fine speckle texture."""
    f = np.fft.fftfreq(n)
    fr = np.hypot(f[:, None], f[None, :]) * scale  # a physical texture spans more pixels at higher magnification
    noise = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    slow = np.real(np.fft.ifft2(noise * np.exp(-((fr / 0.02) ** 2))))
    fine = np.real(np.fft.ifft2(noise[::-1] * np.exp(-(((fr - 0.18) / 0.08) ** 2))))
    slow = slow / (slow.std() + 1e-12)
    fine = fine / (fine.std() + 1e-12)
    return np.clip(mean_nm * (1 + 0.12 * slow + 0.10 * fine), 0.1, None)


def specks(rng: np.random.Generator, xx, yy, n: int, scale: float = 1.0) -> np.ndarray:
    """Hydrocarbon contamination: faint low-Z blobs, a nuisance that is not a particle."""
    out = np.zeros_like(xx)
    for _ in range(rng.poisson(1.5)):
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(1.0, 3.0) * scale
        out += rng.uniform(2, 8) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return out


def support(rng: np.random.Generator, kind: str, n: int, size: int, mean_nm: float, scale: float, xx, yy,
            lattice_px: float) -> tuple[np.ndarray, int]:
    """Projected thickness of the support (nm) and its atomic number."""
    if kind == "carbon":
        return carbon(rng, n, mean_nm, scale), Z_SUPPORT
    if kind == "holey":
        return _holey(rng, n, size, mean_nm, scale, xx, yy), Z_SUPPORT
    if kind == "lattice":
        return _lattice(rng, n, mean_nm, scale, xx, yy, lattice_px), Z_LATTICE
    if kind == "graphene":
        return _graphene(rng, n, size, scale, xx, yy), Z_SUPPORT
    raise ValueError(f"unknown support {kind!r}")


def _holey(rng, n: int, size: int, mean_nm: float, scale: float, xx, yy) -> np.ndarray:
    """Holey carbon: a hole much larger than the frame, its edge in view most of the time, a thicker rim."""
    film = carbon(rng, n, mean_nm, scale)
    where = rng.random()
    if where < 0.25:
        return film  # on the film, away from any hole
    if where < 0.40:
        return np.zeros_like(film)  # over the hole: vacuum under the particle
    radius = rng.uniform(1.0, 4.0) * size
    phi, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.4, 0.4) * size
    cx = n / 2 + (offset + radius) * np.cos(phi)
    cy = n / 2 + (offset + radius) * np.sin(phi)
    d = np.hypot(xx - cx, yy - cy) - radius  # > 0 on the film
    soft = 1.2 * size / 128
    on_film = 1 / (1 + np.exp(-np.clip(d / soft, -50, 50)))
    rim = 1 + rng.uniform(0.3, 0.9) * np.exp(-np.clip(d, 0, None) / (rng.uniform(3, 8) * scale * size / 128))
    return film * on_film * rim


def _lattice(rng, n: int, mean_nm: float, scale: float, xx, yy, spacing_px: float) -> np.ndarray:
    """A crystalline support: a thinner film whose lattice fringes show at this sampling (one grain per frame)."""
    base = carbon(rng, n, 0.5 * mean_nm, scale)
    spacing = max(2.2, spacing_px * scale)  # above Nyquist, or the fringes alias
    turn = rng.uniform(0, np.pi)
    fringes = np.zeros_like(xx)
    for k in range(3):  # hexagonal: three reciprocal vectors 60 degrees apart
        a = turn + k * np.pi / 3
        fringes += np.cos(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / spacing + rng.uniform(0, 2 * np.pi))
    return np.clip(base * (1 + rng.uniform(0.10, 0.30) * fringes / 3), 0.05, None)


def _graphene(rng, n: int, size: int, scale: float, xx, yy) -> np.ndarray:
    """A graphene-like film: 1-3 layers (0.34 nm each), extra-layer patches, patches of polymer residue."""
    t = np.full_like(xx, 0.34 * rng.integers(1, 4))
    for _ in range(rng.poisson(2)):
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.1, 0.5) * size * scale
        t += 0.34 * (np.hypot(xx - cx, (yy - cy) * rng.uniform(0.5, 1.5)) < r)
    residue = carbon(rng, n, 1.5, scale * 0.5)
    keep = carbon(rng, n, 1.0, scale * 3) > 1.05  # coarse patches cover a part of the film
    return t + residue * keep


def contamination(rng: np.random.Generator, kind: str, n: int, size: int, scale: float, xx, yy) -> np.ndarray:
    """Projected thickness (nm) of carbonaceous contamination."""
    if kind == "specks":
        return specks(rng, xx, yy, n, scale)
    if kind == "none":
        return np.zeros_like(xx)
    if kind == "deposit":
        return specks(rng, xx, yy, n, scale) + _deposit(rng, n, size, xx, yy)
    if kind == "residue":
        out = np.zeros_like(xx)
        for _ in range(rng.poisson(12)):
            cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.6, 2.0) * scale
            out += rng.uniform(1, 5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        return out
    raise ValueError(f"unknown contamination {kind!r}")


def _deposit(rng, n: int, size: int, xx, yy) -> np.ndarray:
    """Beam-induced carbon deposit from an earlier, smaller scan: a raised rectangle, heaviest along its edges."""
    if rng.random() < 0.5:
        return np.zeros_like(xx)
    w, h = rng.uniform(0.3, 0.8, size=2) * size
    x0, y0 = rng.uniform(n / 2 - size / 2 - w / 2, n / 2 + size / 2 - w / 2), rng.uniform(n / 2 - size / 2 - h / 2, n / 2 + size / 2 - h / 2)
    soft = 1.5 * size / 128

    def inside(lo, hi, c):
        return 1 / (1 + np.exp(-np.clip((c - lo) / soft, -50, 50))) / (1 + np.exp(-np.clip((hi - c) / soft, -50, 50)))

    box = inside(x0, x0 + w, xx) * inside(y0, y0 + h, yy)
    band = rng.uniform(2, 5) * size / 128
    to_edge = np.minimum(np.minimum(np.abs(xx - x0), np.abs(xx - x0 - w)), np.minimum(np.abs(yy - y0), np.abs(yy - y0 - h)))
    return box * (rng.uniform(1, 3) + rng.uniform(3, 10) * np.exp(-to_edge / band))
