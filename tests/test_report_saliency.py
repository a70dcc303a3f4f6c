"""Saliency maps look where the model looks: frames whose label is decided only by a bright marker in one
corner (background and noise identical for both classes) light up that corner in the evidence for positive,
for a CNN (HiResCAM) and for a dense-only network (occlusion). The marker sits top right, so a map that
came out transposed would light the wrong corner."""

import keras
import numpy as np
import pytest

from nas.report.saliency import last_feature_map, saliency_maps

SIZE = 32


@pytest.fixture(scope="module")
def marked():
    """256 frames of uniform noise; odd ones carry a 5x5 bright square somewhere in the top-right quadrant."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.5, (256, SIZE, SIZE)).astype(np.float32)
    y = (np.arange(256) % 2).astype(np.float32)
    for i in np.flatnonzero(y):
        r, c = rng.integers(1, 8, 2)
        x[i, r : r + 5, SIZE - c - 5 : SIZE - c] = 1.0
    return x, y


def _quadrant_shares(maps: np.ndarray) -> np.ndarray:
    h = SIZE // 2
    mass = np.array([maps[:, :h, h:].sum(), maps[:, :h, :h].sum(), maps[:, h:, :h].sum(), maps[:, h:, h:].sum()])
    return mass / mass.sum()  # the marker's quadrant (top right) first


def _fit(model, x, y, epochs):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x[..., None], y, epochs=epochs, batch_size=32, verbose=0)
    prob = model.predict(x[..., None], verbose=0).ravel()
    assert np.mean((prob >= 0.5) == y) == 1.0, "the model did not learn the marker; the map would mean nothing"


def test_cnn_saliency_lights_up_the_marker_corner(marked):
    x, y = marked
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.GlobalMaxPooling2D()(h)  # our spaces' max head: where Grad-CAM's averaging blurs
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    _fit(model, x, y, epochs=8)
    assert last_feature_map(model).name == model.layers[-3].name
    pos = np.flatnonzero(y == 1)[:16]
    positive, negative, method = saliency_maps(model, x[pos])
    assert method.startswith("HiResCAM") and positive.shape == negative.shape == (16, SIZE, SIZE)
    shares = _quadrant_shares(positive)
    print("marker quadrant first:", shares.round(3))
    assert shares[0] > 0.6 and shares[0] > 3 * shares[1:].max(), shares


def test_dense_only_model_is_explained_by_occlusion_of_the_marker_corner(marked):
    x, y = marked
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    _fit(model, x, y, epochs=15)
    assert last_feature_map(model) is None
    pos = np.flatnonzero(y == 1)[:16]
    positive, _, method = saliency_maps(model, x[pos])
    assert method.startswith("occlusion")
    shares = _quadrant_shares(positive)
    print("marker quadrant first:", shares.round(3))
    assert shares[0] > 0.6 and shares[0] > 3 * shares[1:].max(), shares


def test_saliency_of_a_saturated_model_is_not_blank():
    """A sigmoid saturated to exactly 1.0 in float32 has zero gradient: the map must use the logit."""
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(2, 3, padding="same", activation="relu", kernel_initializer="ones")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(40.0))(h))
    frames = np.zeros((2, SIZE, SIZE), np.float32)
    frames[:, 20:26, 4:10] = 1.0
    assert np.all(np.asarray(model(frames[..., None])) == 1.0)
    positive, negative, _ = saliency_maps(model, frames)
    assert positive.max() == pytest.approx(1.0) and negative.max() == 0.0
    assert positive[:, 20:26, 4:10].mean() > positive[:, :8, 20:].mean() + 0.5
