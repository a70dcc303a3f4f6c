"""The instrument between the specimen and the file: probe and drift blur, scan distortion, shot noise and the
detector chain (gain, offset, compressive response, afterglow, read and scan-line noise, ADC saturation).
"""

from __future__ import annotations

import numpy as np

from nas.synthetic.families import Session


def transfer(n: int, sigma: float, drift: float, angle: float) -> np.ndarray:
    """Fourier transfer function of a Gaussian probe and a linear drift smear."""
    f = np.fft.fftfreq(n)
    fy, fx = f[:, None], f[None, :]
    gauss = np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2))
    smear = np.sinc(drift * (fx * np.cos(angle) + fy * np.sin(angle)))
    return gauss * smear


def line_shifts(rng: np.random.Generator, session: Session, n: int, k: float) -> np.ndarray | None:
    """Fast-scan shift of each canvas line (px): shear from drift during the scan, random line jitter and
    mains hum. None when the session has none, so undistorted frames are computed exactly as before."""
    if not (session.shear or session.jitter or session.hum):
        return None
    y = np.arange(n, dtype=np.float64)
    shift = session.shear * (y - n / 2)
    shift += rng.normal(0, session.jitter * k, n)
    shift += session.hum * k * np.sin(2 * np.pi * y / session.hum_period + rng.uniform(0, 2 * np.pi))
    return shift


def afterglow(counts: np.ndarray, length_px: float) -> np.ndarray:
    """A slow detector response: each pixel keeps exp(-1/length) of the previous one along the fast scan,
    so bright particles trail to the right. Keeps the mean."""
    if length_px <= 0:
        return counts
    a = np.exp(-1 / length_px)
    out = np.empty_like(counts)
    out[:, 0] = counts[:, 0]
    for j in range(1, counts.shape[1]):
        out[:, j] = a * out[:, j - 1] + (1 - a) * counts[:, j]
    return out


def detect(rng: np.random.Generator, expected: np.ndarray, session: Session, k: float) -> np.ndarray:
    """Expected counts per pixel -> a uint16 frame: Poisson shot noise, then the session's detector."""
    counts = rng.poisson(expected * session.dose).astype(np.float64)
    counts = afterglow(counts, session.afterglow * k)
    if session.knee:  # a response that flattens towards the knee, as a PMT or scintillator at high gain does
        out = session.knee * (1 - np.exp(-session.gain * counts / session.knee))
        frame = session.offset + out + rng.normal(0, session.read_noise, expected.shape)
    else:
        frame = session.offset + session.gain * counts + rng.normal(0, session.read_noise, expected.shape)
    frame += rng.normal(0, session.line_noise, (expected.shape[0], 1))  # scan-line offsets
    return np.clip(np.round(frame), 0, session.full_scale).astype(np.uint16)
