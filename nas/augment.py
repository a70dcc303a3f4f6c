"""Label-preserving augmentation of training batches, and test-time augmentation of predictions.

HAADF frames have no preferred orientation, so flips and 90-degree turns never change a label. What
varies between acquisition sessions is contrast and detector response (intensity, gamma), dose (noise),
probe sharpness (a little blur) and magnification (scale): each is a searched or set strength, kept below
the margins that decide a label (a strong blur makes a particle "defocused", a strong zoom-in can cut it
at the frame edge). Frames arrive normalized to [0, 1] by the cache, so a detector's gain and offset are
already gone; what is left of them is contrast and nonlinearity.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TTA_VIEWS = 8  # the dihedral group of the square: 4 turns, each with and without a flip


def trial_augment(experiment_augment, values: dict) -> dict:
    """A trial's augmentation: the experiment's [augment] (a dataclass), with the space's augment.* keys (searched
    or fixed per trial) in place of the experiment's."""
    return dataclasses.asdict(experiment_augment) | {k[len("augment."):]: v for k, v in values.items()
                                                     if k.startswith("augment.")}


def augment_batch(x: np.ndarray, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """A batch (B, S, S) in [0, 1], augmented as cfg says (keys of the experiment's [augment] section)."""
    x = x.copy()
    if cfg.get("flips"):
        x = _flips(x, rng)
    if cfg.get("rot90"):
        turns = rng.integers(0, 4, x.shape[0])
        for k in (1, 2, 3):
            x[turns == k] = np.rot90(x[turns == k], k, axes=(1, 2))
    if cfg.get("scale"):
        x = _scale(x, rng, cfg["scale"])
    if cfg.get("shift"):
        x = _shift(x, rng, cfg["shift"])
    if cfg.get("blur"):
        x = _blur(x, rng, cfg["blur"])
    if cfg.get("intensity"):
        a, b = cfg["intensity"], x.shape[0]
        x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-a, a, (b, 1, 1)))  # detector nonlinearity
        x = x * rng.uniform(1 - a, 1 + a, (b, 1, 1)) + rng.uniform(-a / 2, a / 2, (b, 1, 1))
    if cfg.get("noise"):
        x = x + rng.normal(0, 1, x.shape) * cfg["noise"] * np.sqrt(np.clip(x, 0, 1))
    return np.clip(x, 0, 1).astype(np.float32)


def _flips(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, v = rng.random(x.shape[0]) < 0.5, rng.random(x.shape[0]) < 0.5
    x[h] = x[h][:, :, ::-1]
    x[v] = x[v][:, ::-1, :]
    return x


def _shift(x: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    b, s = x.shape[0], x.shape[1]
    m = max(1, int(round(fraction * s)))
    padded = np.pad(x, ((0, 0), (m, m), (m, m)), mode="edge")
    dy, dx = rng.integers(0, 2 * m + 1, (2, b))
    return np.stack([padded[i, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])


def _blur(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Gaussian blur of a random sigma up to `strength` pixels (of the model's input), half the frames."""
    from scipy.ndimage import gaussian_filter

    for i in np.flatnonzero(rng.random(x.shape[0]) < 0.5):
        x[i] = gaussian_filter(x[i], rng.uniform(0, strength), mode="nearest")
    return x


def _scale(x: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Zoom about the centre by a factor in [1/(1+s), 1+s], half the frames: another magnification."""
    from scipy.ndimage import affine_transform

    s = x.shape[1]
    centre = (s - 1) / 2
    for i in np.flatnonzero(rng.random(x.shape[0]) < 0.5):
        zoom = np.exp(rng.uniform(-np.log1p(strength), np.log1p(strength)))
        inverse = 1.0 / zoom
        x[i] = affine_transform(x[i], [inverse, inverse], offset=centre - inverse * centre, order=1, mode="nearest")
    return x


def dihedral_views(x: np.ndarray) -> np.ndarray:
    """The 8 flips and turns of a batch (B, S, S, C), stacked view by view: (8 B, S, S, C)."""
    views = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    views += [np.rot90(x[:, :, ::-1], k, axes=(1, 2)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(views))


def dihedral_views_tf(x):
    """The same 8 views in TensorFlow, for the exported model's graph."""
    import tensorflow as tf

    flipped = tf.image.flip_left_right(x)
    return tf.concat([tf.image.rot90(x, k) for k in range(4)] + [tf.image.rot90(flipped, k) for k in range(4)], axis=0)
