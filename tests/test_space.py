"""Search-space files: every shipped space parses and builds; each mistake names the file and the key."""

import keras_tuner
import pytest

from nas.errors import NasError
from nas.models import build_model
from nas.space import load_space, parse_space

from .conftest import REPO

SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_at_least_two_spaces_ship():
    names = {p.stem for p in SPACES}
    assert {"small_cnn", "residual"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_builds_models_for_sampled_values(path):
    space = load_space(path)
    # every space searches something but pretrain.yaml, the one network `make pretrained` trains, every key fixed
    assert bool(space.searched()) != (path.stem == "pretrain"), "a space should search something"
    for seed in range(3):
        hp = keras_tuner.HyperParameters()
        values = space.resolve(hp)
        for dim in space.searched():  # sample every searched dimension
            hp.values[dim.name] = dim.choice[seed % len(dim.choice)] if dim.choice else (dim.high if seed % 2 else dim.low)
        values = space.resolve(hp)
        model = build_model(values, 32, 0.9)
        assert model.output_shape == (None, 1)
        assert model.count_params() > 0


def _space(**blocks):
    lines = ["blocks:"] + [f"  {k}: {v}" for k, v in blocks.items()]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "text, expected",
    [
        (_space(filters="{int: [64, 32]}"), "blocks.filters: range min 64 > max 32"),
        (_space(filtres=16), "unknown key blocks.filtres"),
        (_space(pooling="{choice: [max, median]}"), "blocks.pooling: expected one of max, avg, none"),
        (_space(dropout="{float: [0.0, 0.5], sampling: log}"), "log sampling needs min > 0"),
        (_space(filters="{choice: []}"), "choice must be a non-empty list"),
        (_space(filters="{int: [8, 64], choice: [8]}"), "exactly one of choice/int/float"),
        (_space(count="{float: [1.0, 3.0]}"), "expected an int range"),
        (_space(count="{int: [1, 3], stpe: 1}"), "unknown field(s) stpe"),
        ("head:\n  dense: 32\n", "needs a blocks section"),
        ("blocks: [1, 2]\n", "blocks must be a mapping"),
        ("blocks:\n  count: {int: [1, 3]\n", "not valid YAML"),
        (_space(count="{int: [1, 3]}") + "\nwarm_start:\n  - {blocks.count: 5}\n", "warm_start[0].blocks.count: expected a value in [1, 3]"),
        (_space(count="{int: [1, 3]}") + "\nwarm_start:\n  - {blocks.cuont: 2}\n", "warm_start[0].blocks.cuont: not a key of this space"),
        (_space(count="{int: [1, 3]}") + "\nwarm_start:\n  - {blocks.filters: 8}\n", "warm_start[0].blocks.filters: a constant"),
        (_space(pooling="{choice: [max, avg]}") + "\nwarm_start:\n  - {blocks.pooling: none}\n", "expected one of max, avg"),
        (_space() + "\nwarm_start: {blocks.count: 2}\n", "warm_start must be a list"),
    ],
)
def test_space_mistakes_name_file_and_key(text, expected):
    with pytest.raises(NasError) as info:
        parse_space(text, "spaces/bad.yaml")
    assert expected in str(info.value)
    assert "spaces/bad.yaml" in str(info.value)


def test_fingerprint_ignores_comments_but_not_meaning():
    a = parse_space("# one\nblocks:\n  filters: {choice: [8, 16]}\n")
    b = parse_space("# two\nblocks:\n  filters: {choice: [8, 16]}\n")
    c = parse_space("blocks:\n  filters: {choice: [8, 32]}\n")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_warm_start_fills_unnamed_keys_with_their_first_choice_or_lower_bound():
    space = parse_space(_space(count="{int: [2, 4]}", filters="{choice: [8, 16]}", dropout="{float: [0.1, 0.3]}")
                        + "\nwarm_start:\n  - {blocks.filters: 16}\n", "s.yaml")
    assert space.warm_start == ({"blocks.count": 2, "blocks.filters": 16, "blocks.dropout": 0.1},)
    without = parse_space(_space(count="{int: [2, 4]}", filters="{choice: [8, 16]}", dropout="{float: [0.1, 0.3]}"), "s.yaml")
    assert space.fingerprint != without.fingerprint  # resume refuses a changed warm start


def test_cosine_schedule_decays_the_rate_to_zero_over_the_trial():
    space = load_space(REPO / "search_spaces" / "haadf.yaml")
    values = {name: dim.constant for name, dim in space.dimensions.items()}
    values.update(space.warm_start[0])
    model = build_model(values, 32, 0.9, decay_steps=100)
    schedule = model.optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(values["optimizer.learning_rate"])
    assert float(schedule(50)) == pytest.approx(values["optimizer.learning_rate"] / 2, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_space_to_depth_folds_every_pixel_into_channels_and_names_a_bad_size():
    import keras
    import numpy as np
    import tensorflow as tf

    hp = keras_tuner.HyperParameters()
    values = {**load_space(REPO / "search_spaces" / "small_cnn.yaml").resolve(hp), "stem.space_to_depth": 2}
    model = build_model(values, 32, 0.9)
    folded = keras.Model(model.input, model.get_layer("space_to_depth").output)
    x = np.random.default_rng(0).random((3, 32, 32, 1)).astype(np.float32)
    assert folded.output_shape == (None, 16, 16, 4)
    np.testing.assert_array_equal(folded.predict_on_batch(x), tf.nn.space_to_depth(x, 2).numpy())
    with pytest.raises(NasError, match="stem.space_to_depth 3: the input size 32 px is not a multiple of 3"):
        build_model({**values, "stem.space_to_depth": 3}, 32, 0.9)


def test_group_normalization_uses_each_frames_own_statistics_at_any_width():
    """A frame's normalized map does not depend on the other frames of its batch, even in training mode (batch
    normalization's does), and a width that 8 does not divide gets its largest divisor up to 8 as group count."""
    import keras
    import numpy as np

    hp = keras_tuner.HyperParameters()
    values = {**load_space(REPO / "search_spaces" / "small_cnn.yaml").resolve(hp), "stem.filters": 0,
              "blocks.count": 4, "blocks.filters": 12, "blocks.growth": 1.5}
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((1, 32, 32, 1)).astype(np.float32) for _ in range(3))
    change = {}
    for norm, layer_type in (("group", keras.layers.GroupNormalization), ("batch", keras.layers.BatchNormalization)):
        model = build_model({**values, "blocks.normalization": norm}, 32, 0.9)
        layers = [layer for layer in model.layers if isinstance(layer, layer_type)]
        first = keras.Model(model.input, layers[0].output)
        maps = [np.asarray(first(np.concatenate([a, other]), training=True))[0] for other in (b, 10 * c)]
        change[norm] = float(np.abs(maps[0] - maps[1]).max())
        if norm == "group":
            assert [layer.groups for layer in layers] == [6, 6, 3, 8]  # 12, 18, 27 and 40 channels
    assert change["group"] < 1e-5 and change["batch"] > 0.1, change


def test_mixstyle_mixes_frames_statistics_in_training_only_after_the_first_two_blocks():
    """In training each frame's per-channel mean and standard deviation move to a mix of its own and a
    partner's, its normalized map is kept; at inference the layer is the identity; a space without the key
    builds no such layer."""
    import keras
    import numpy as np

    from nas.models import MixStyle

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 8, 8, 3)) * rng.uniform(0.5, 5, (16, 1, 1, 3)) + rng.normal(0, 3, (16, 1, 1, 3))).astype(np.float32)
    layer = MixStyle(1.0, seed=1)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    mu, sig = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
    ymu, ysig = y.mean(axis=(1, 2)), y.std(axis=(1, 2))
    assert not np.allclose(ysig, sig, rtol=1e-2)  # the statistics moved ...
    assert np.all(ysig >= sig.min() * 0.99) and np.all(ysig <= sig.max() * 1.01)  # ... to mixes of those in the batch
    assert np.all(ymu >= mu.min() - 1e-3) and np.all(ymu <= mu.max() + 1e-3)
    np.testing.assert_allclose((y - ymu[:, None, None]) / ysig[:, None, None],  # each frame's own map, restyled
                               (x - mu[:, None, None]) / sig[:, None, None], atol=1e-3)
    assert np.array_equal(np.asarray(MixStyle(0.0)(x, training=True)), x)

    hp = keras_tuner.HyperParameters()
    values = {**load_space(REPO / "search_spaces" / "small_cnn.yaml").resolve(hp), "blocks.count": 3}
    assert not any(isinstance(layer, MixStyle) for layer in build_model(values, 32, 0.9).layers)
    model = build_model({**values, "blocks.mixstyle": 0.5, "blocks.dropout": 0.1}, 32, 0.9)
    mixes = [layer for layer in model.layers if isinstance(layer, MixStyle)]
    assert len(mixes) == 2 and mixes[0].p == 0.5
    after = [model.layers[model.layers.index(m) + 1] for m in mixes]  # mixed before dropout zeroes channels
    assert all(isinstance(layer, keras.layers.SpatialDropout2D) for layer in after), after
    restored = keras.Model.from_config(model.get_config())
    assert sum(isinstance(layer, MixStyle) for layer in restored.layers) == 2
    with pytest.raises(NasError, match="mixstyle"):
        parse_space("name: s\nblocks:\n  mixstyle: 1.5\n", "bad.yaml")


def test_mixstyle_under_a_bfloat16_policy_returns_finite_bfloat16_and_is_the_identity_at_inference():
    import keras
    import numpy as np

    from nas.models import MixStyle

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = MixStyle(1.0, seed=2)
        x = keras.ops.cast(np.random.default_rng(1).normal(3.0, 2.0, (8, 6, 6, 4)), "bfloat16")
        y = layer(x, training=True)
        assert keras.backend.standardize_dtype(y.dtype) == "bfloat16" and np.isfinite(np.asarray(keras.ops.cast(y, "float32"))).all()
        assert np.array_equal(np.asarray(keras.ops.cast(layer(x, training=False), "float32")),
                              np.asarray(keras.ops.cast(x, "float32")))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("gamma, eps", [(0.0, 0.0), (2.0, 0.0), (0.0, 0.1), (2.0, 0.1)])
def test_the_loss_section_compiles_focal_and_smoothed_cross_entropy(gamma, eps):
    """The compiled loss is the formula the space names: against targets t smoothed to eps/2 and 1 - eps/2,
    (1 - p_t)^gamma times the cross-entropy, p_t = t p + (1 - t)(1 - p) (gamma 0, eps 0: plain cross-entropy)."""
    import numpy as np

    space = parse_space(f"blocks: {{count: 1}}\nloss: {{focal_gamma: {gamma}, label_smoothing: {eps}}}\n")
    values = {name: dim.constant for name, dim in space.dimensions.items()}
    model = build_model(values, 16, 0.9)
    y = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    p = np.array([[0.9], [0.2], [0.3], [0.7]], np.float32)
    t = y * (1 - eps) + eps / 2
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_true = t * p + (1 - t) * (1 - p)
    expected = float(np.mean((1 - p_true) ** gamma * bce))
    assert float(model.compute_loss(None, y, p, training=False)) == pytest.approx(expected, rel=1e-4)


def test_a_loss_key_out_of_range_names_the_file_and_key():
    with pytest.raises(NasError, match=r"s\.yaml: loss\.focal_gamma"):
        parse_space("blocks: {count: 1}\nloss: {focal_gamma: 9.0}\n", "s.yaml")
    with pytest.raises(NasError, match=r"unknown key loss\.alpha"):
        parse_space("blocks: {count: 1}\nloss: {alpha: 0.5}\n", "s.yaml")
