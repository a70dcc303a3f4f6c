"""Keras models from one trial's resolved space values: the CNN families and their compile step."""

from __future__ import annotations

from typing import Any

import keras
import keras_tuner

from nas.errors import NasError
from nas.space import SearchSpace

PRECISION_METRIC = "prec_at_rec"  # a name of our own: KerasTuner cannot rebuild the default one (STACK.md)
PR_AUC_METRIC = "pr_auc"


# Keras's default: each step's batch statistics weigh 1% in the running mean and variance used at inference.
BN_MOMENTUM = 0.99
GROUPS = 8  # group normalization's most groups: a layer gets the largest divisor of its channels up to 8


def bn_momentum(steps: int) -> float:
    """Batch-norm momentum for a fit of `steps` steps: Keras's 0.99 when the fit is long enough to forget the
    running statistics' start (mean 0, variance 1), a faster average when it is not. Why: after n steps the start
    still weighs momentum**n, and conv activations of [0, 1] frames have variances near 1e-3, so at 0.99 a fit of
    a few hundred steps serves with the start's variance. Measured on the demo's 675 frames (336 steps, 16
    epochs): val PR-AUC 0.52 at 0.99 (chance), 0.92 at 0.97. Here the start weighs at most e**-10 at the end."""
    if steps <= 0:
        return BN_MOMENTUM
    return min(BN_MOMENTUM, max(0.5, 1.0 - 10.0 / steps))


def fresh_session() -> None:
    """keras.backend.clear_session(), and what it leaves: each traced training step registers the default
    distribution strategy's all-reduce as a `CustomGradient-N` in TensorFlow's global gradient registry,
    whose closure holds the step's whole graph (tensorflow#97697, fixed upstream in tensorflow#109334 after
    our 2.21; tf-keras#898 purges them the same way). Found with gc.get_referrers: 3 FuncGraphs and ~30k
    objects stayed per trained model, ~24 MB of resident memory; purged, the objects stay flat and RSS grows
    ~0.4 MB a model of one architecture (12 models). Only call between models: an entry is read
    while its step is traced, never afterwards. malloc_trim hands the freed pages back to the system."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if isinstance(registry, dict):
        for name in [n for n in registry if str(n).startswith("CustomGradient-")]:
            del registry[name]
    keras.backend.clear_session()  # collects the graphs freed above
    _freeze_once()
    _malloc_trim()


_frozen = False


def _freeze_once() -> None:
    """After the first full collection, move every object alive then (TensorFlow's and Keras's modules, ~380k
    objects) out of the collector's sight: later collections scan only what trials made. A full collection
    took 0.18 s with them in sight, a tenth of a second-scale trial's fixed cost."""
    global _frozen
    if not _frozen:
        import gc

        gc.freeze()
        _frozen = True


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _norm(x, kind: str, momentum: float = BN_MOMENTUM):
    if kind == "batch":
        return keras.layers.BatchNormalization(momentum=momentum)(x)
    if kind == "layer":
        return keras.layers.LayerNormalization()(x)
    if kind == "group":
        # each frame's own statistics over its whole map (in channel groups), never the training sessions':
        # batch norm's moving statistics are the training sessions' mean and variance, which a new
        # session's frames (other dose, gain, magnification) need not share
        channels = int(x.shape[-1])
        return keras.layers.GroupNormalization(groups=max(d for d in range(1, GROUPS + 1) if channels % d == 0))(x)
    if kind == "none":
        return x
    raise NasError(f"blocks.normalization {kind!r}: expected none, batch, layer or group")


def all_layers(model):
    """Every layer of a model, those of nested models (an ensemble's members, AutoKeras blocks) included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


MIXSTYLE_BLOCKS = 2  # mixed after the first two blocks, where features still describe contrast and texture
MIXSTYLE_ALPHA = 0.1  # Beta(0.1, 0.1): most mixes lie near one frame or the other (the paper's value)


@keras.saving.register_keras_serializable(package="stem_nas")
class MixStyle(keras.layers.Layer):
    """In training, with probability p per frame, replace each channel's mean and standard deviation over the
    frame's map with a mix of its own and those of another frame in the batch (Zhou et al., "Domain
    generalization with MixStyle", ICLR 2021); at inference the identity. Why: early feature statistics carry a
    frame's style (dose, detector response, support texture), which differs between sessions while the label
    does not; mixing them across a batch drawn from several sessions trains on styles between the sessions seen.
    Statistics are computed in float32 whatever the policy and held constant in the gradient, as in the paper."""

    def __init__(self, p: float = 0.5, alpha: float = MIXSTYLE_ALPHA, eps: float = 1e-6, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.p, self.alpha, self.eps, self.seed = float(p), float(alpha), float(eps), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.p <= 0:
            return x
        ops = keras.ops
        xf = ops.cast(x, "float32")
        mu = ops.stop_gradient(ops.mean(xf, axis=(1, 2), keepdims=True))
        sig = ops.stop_gradient(ops.sqrt(ops.var(xf, axis=(1, 2), keepdims=True) + self.eps))
        batch = ops.shape(xf)[0]
        lam = keras.random.beta((batch, 1, 1, 1), self.alpha, self.alpha, seed=self.generator)
        partner = keras.random.shuffle(ops.arange(batch), seed=self.generator)
        mixed_mu = lam * mu + (1.0 - lam) * ops.take(mu, partner, axis=0)
        mixed_sig = lam * sig + (1.0 - lam) * ops.take(sig, partner, axis=0)
        chosen = keras.random.uniform((batch, 1, 1, 1), seed=self.generator) < self.p
        out = ops.where(chosen, (xf - mu) / sig * mixed_sig + mixed_mu, xf)
        return ops.cast(out, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "p": self.p, "alpha": self.alpha, "eps": self.eps, "seed": self.seed}


def _pool(x, kind: str):
    if kind == "none" or x.shape[1] is not None and x.shape[1] < 4:
        return x  # never pool a map below 2 px: deep stacks on small inputs stay valid
    layer = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    return layer(2)(x)


def _block(x, v: dict[str, Any], filters: int, momentum: float, mixstyle: float = 0.0):
    kind, k, act, norm = v["blocks.type"], v["blocks.kernel_size"], v["blocks.activation"], v["blocks.normalization"]
    if kind == "separable":
        y = keras.layers.SeparableConv2D(filters, k, padding="same", use_bias=norm == "none")(x)
        y = keras.layers.Activation(act)(_norm(y, norm, momentum))
    elif kind == "residual":
        y = keras.layers.Conv2D(filters, k, padding="same", use_bias=norm == "none")(x)
        y = keras.layers.Activation(act)(_norm(y, norm, momentum))
        y = keras.layers.Conv2D(filters, k, padding="same", use_bias=norm == "none")(y)
        y = _norm(y, norm, momentum)
        shortcut = x if x.shape[-1] == filters else keras.layers.Conv2D(filters, 1, padding="same")(x)
        y = keras.layers.Activation(act)(keras.layers.Add()([y, shortcut]))
    else:
        y = keras.layers.Conv2D(filters, k, padding="same", use_bias=norm == "none")(x)
        y = keras.layers.Activation(act)(_norm(y, norm, momentum))
    y = _pool(y, v["blocks.pooling"])
    if mixstyle > 0:  # before dropout: statistics of the whole map, never of channels dropout zeroed
        y = MixStyle(mixstyle)(y)
    if v["blocks.dropout"] > 0:
        y = keras.layers.SpatialDropout2D(v["blocks.dropout"])(y)
    return y


def _space_to_depth(x, k: int):
    """(S, S, 1) -> (S/k, S/k, k*k): every pixel kept, the network's cost that of an S/k px input. Resizing
    to S/k instead averages away the finest detail, and with it what tells a sharp particle from a slightly
    defocused or smeared one (whose limits are 1-4 px of a 128 px frame). Reshape and Permute layers, so the
    model serializes and exports like any other."""
    if k <= 1:
        return x
    s = x.shape[1]
    if s % k:
        raise NasError(f"stem.space_to_depth {k}: the input size {s} px is not a multiple of {k}; choose sizes "
                       f"divisible by it")
    x = keras.layers.Reshape((s // k, k, s // k, k), name="fold_rows")(x)
    x = keras.layers.Permute((1, 3, 2, 4), name="fold_blocks")(x)
    return keras.layers.Reshape((s // k, s // k, k * k), name="space_to_depth")(x)


def build_network(v: dict[str, Any], image_size: int, momentum: float = BN_MOMENTUM) -> keras.Model:
    """The uncompiled network: (size, size, 1) frames in [0, 1] -> probability of 'positive'; `momentum` is
    batch norm's (see bn_momentum)."""
    inputs = keras.Input((image_size, image_size, 1), name="frame")
    x = _space_to_depth(inputs, v.get("stem.space_to_depth", 1))
    if v["stem.filters"] > 0:
        x = keras.layers.Conv2D(v["stem.filters"], v["stem.kernel_size"], strides=v["stem.strides"], padding="same")(x)
        x = keras.layers.Activation(v["blocks.activation"])(_norm(x, v["blocks.normalization"], momentum))
    for i in range(v["blocks.count"]):
        filters = max(1, int(round(v["blocks.filters"] * v["blocks.growth"] ** i)))
        x = _block(x, v, filters, momentum, v.get("blocks.mixstyle", 0.0) if i < MIXSTYLE_BLOCKS else 0.0)
    pooling = v["head.pooling"]
    if pooling == "flatten":
        x = keras.layers.Flatten()(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D()(x)
    else:
        x = keras.layers.GlobalAveragePooling2D()(x)
    if v["head.dropout"] > 0:
        x = keras.layers.Dropout(v["head.dropout"])(x)
    if v["head.dense"] > 0:
        x = keras.layers.Dense(v["head.dense"], activation=v["blocks.activation"])(x)
    # float32 output under a mixed policy: a bfloat16 sigmoid has 8 bits of mantissa, too coarse for a threshold
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="haadf_classifier")


def network_macs(v: dict[str, Any], image_size: int, channel_block: int = 1) -> int:
    """Multiply-adds of one frame's forward pass through build_network(v, image_size), counted from the
    values without building anything (a proposal's cost is judged for thousands of candidates; a build
    takes tens of milliseconds). Convolutions and dense layers only; tests pin it to the built layers.
    With channel_block > 1, every convolution's output channels (and so the next layer's input) are counted
    rounded up to a multiple of it: the work a CPU's blocked layout does (oneDNN computes AVX-512
    convolutions in blocks of 16 channels; see nas.search.costs). The frame's own channels and the dense
    head's units are not rounded."""
    def block(n: int) -> int:
        return -(-n // channel_block) * channel_block

    s, c = image_size, 1  # c: the channels as counted; built: as built (a shortcut projects when they change)
    if (k := v.get("stem.space_to_depth", 1)) > 1:
        s, c = s // k, k * k
    built, macs = c, 0
    if v["stem.filters"] > 0:
        s = -(-s // v["stem.strides"])  # 'same' padding
        built, f = v["stem.filters"], block(v["stem.filters"])
        macs, c = macs + s * s * v["stem.kernel_size"] ** 2 * c * f, f
    k2 = v["blocks.kernel_size"] ** 2
    for i in range(v["blocks.count"]):
        filters = max(1, int(round(v["blocks.filters"] * v["blocks.growth"] ** i)))
        f = block(filters)
        if v["blocks.type"] == "separable":
            macs += s * s * (k2 * c + c * f)
        elif v["blocks.type"] == "residual":
            macs += s * s * (k2 * c * f + k2 * f * f + (c * f if built != filters else 0))
        else:
            macs += s * s * k2 * c * f
        c, built = f, filters
        if v["blocks.pooling"] != "none" and s >= 4:  # _pool
            s //= 2
    if v["head.pooling"] == "flatten":
        c *= s * s
    if v["head.dense"] > 0:
        macs, c = macs + c * v["head.dense"], v["head.dense"]
    return int(macs + c)


def make_optimizer(v: dict[str, Any], decay_steps: int = 0) -> keras.optimizers.Optimizer:
    """The optimizer; with schedule cosine (and a known trial length) its rate decays to 0 by the last step,
    which settles batch-norm networks whose validation score swings at a constant rate."""
    name, lr, wd = v["optimizer.name"], v["optimizer.learning_rate"], v["optimizer.weight_decay"]
    if v.get("optimizer.schedule", "constant") == "cosine" and decay_steps > 0:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd or 1e-4)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=wd or None)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, weight_decay=wd or None)
    return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd or None)


def make_loss(v: dict[str, Any]) -> keras.losses.Loss | str:
    """Binary cross-entropy, focal where loss.focal_gamma > 0, with smoothed labels where loss.label_smoothing
    > 0 (values logged before these keys existed have neither)."""
    gamma, eps = v.get("loss.focal_gamma", 0.0), v.get("loss.label_smoothing", 0.0)
    if gamma > 0:
        return keras.losses.BinaryFocalCrossentropy(gamma=gamma, label_smoothing=eps)
    if eps > 0:
        return keras.losses.BinaryCrossentropy(label_smoothing=eps)
    return "binary_crossentropy"


def compile_model(model: keras.Model, v: dict[str, Any], recall_floor: float, decay_steps: int = 0) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(v, decay_steps),
        loss=make_loss(v),
        metrics=[
            keras.metrics.PrecisionAtRecall(recall_floor, name=PRECISION_METRIC),
            keras.metrics.AUC(curve="PR", name=PR_AUC_METRIC),
        ],
    )
    return model


def build_model(v: dict[str, Any], image_size: int, recall_floor: float, decay_steps: int = 0) -> keras.Model:
    """Built for a fit of `decay_steps` steps: the cosine schedule spans them and batch norm's running
    statistics settle within them."""
    return compile_model(build_network(v, image_size, bn_momentum(decay_steps)), v, recall_floor, decay_steps)


class SpaceHyperModel(keras_tuner.HyperModel):
    """KerasTuner's view of a SearchSpace: build(hp) registers the space's dimensions and builds."""

    def __init__(self, space: SearchSpace, image_size: int, recall_floor: float):
        super().__init__(name=space.name)
        self.space = space
        self.image_size = image_size
        self.recall_floor = recall_floor

    def build(self, hp) -> keras.Model:
        """The model at its trial's input size (the tuner builds with the trial's schedule length itself)."""
        values = self.space.resolve(hp)
        return build_model(values, int(values.get("input.image_size", self.image_size)), self.recall_floor)
