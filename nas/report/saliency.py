"""Where a model looks: a class-activation map on the last convolutional feature map of a Keras functional
model (HiResCAM, a Grad-CAM variant), and occlusion (how the probability moves when a patch is hidden) for
models without one at the top level, such as an ensemble of sub-models or a dense-only network.

Each frame gets two maps on one scale: where the model found evidence for "positive" (one whole particle)
and where it found evidence for "negative". A false positive's first map shows what fooled it; a false
negative's first map shows whether it saw the particle at all, its second what made it say no.
"""

from __future__ import annotations

import numpy as np

OCCLUSION_BATCH = 256


def saliency_maps(model, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Evidence for positive and for negative, each (n, S, S) in [0, 1], scaled per frame by the larger of the
    two maxima, and a sentence saying how they were made. frames: (n, S, S) normalized as the model sees them."""
    frames = np.asarray(frames, dtype=np.float32)
    if len(frames) == 0:
        return np.zeros_like(frames), np.zeros_like(frames), "no frames to explain"
    layer = last_feature_map(model)
    if layer is not None:
        signed = hires_cam(model, layer, frames)
        method = (f"HiResCAM (Grad-CAM without averaging the gradients over the map) on layer `{layer.name}`, "
                  "the last convolutional feature map")
    else:
        patch, stride = occlusion_geometry(frames.shape[1])
        signed = occlusion(model, frames, patch, stride)
        method = (f"occlusion: how much the probability falls (evidence for positive) or rises (for negative) when a "
                  f"{patch}x{patch} px patch is replaced by the frame's median, stride {stride} px (the model has no "
                  "convolutional layer at its top level)")
    positive, negative = _per_frame_scale(np.clip(signed, 0, None), np.clip(-signed, 0, None))
    return positive, negative, method


def _is_conv(layer) -> bool:
    import keras

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D))


def last_feature_map(model):
    """The last top-level layer with a 4-D output of at least 2x2 that comes after a convolution, or None."""
    seen_conv, found = False, None
    for layer in model.layers:
        seen_conv = seen_conv or _is_conv(layer)
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used twice has no single output
            continue
        if seen_conv and len(shape) == 4 and (shape[1] or 0) >= 2 and (shape[2] or 0) >= 2:
            found = layer
    return found


def _logit_head(model):
    """The tensor whose transform gives the pre-sigmoid logit, and that transform. A saturated sigmoid has
    zero gradient in float32, so the map differentiates the logit, not the probability."""
    import keras
    from keras import ops

    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") == "sigmoid":
        if isinstance(last, keras.layers.Activation):
            return last.input, lambda x: x
        if isinstance(last, keras.layers.Dense):
            return last.input, lambda x: ops.matmul(x, last.kernel) + (last.bias if last.bias is not None else 0.0)
    return model.outputs[0], lambda p: ops.log(ops.clip(p, 1e-7, 1.0)) - ops.log(ops.clip(1.0 - p, 1e-7, 1.0))


def hires_cam(model, layer, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): the feature maps times the gradient of the positive class's logit,
    element by element, summed over channels and upsampled to the frame; signed (> 0: evidence for
    positive, < 0: for negative).

    Grad-CAM (Selvaraju et al. 2017) first averages each channel's gradient over the map. Under a
    global-average head feeding the output layer directly the two maps are the same; under a global-max head
    (which our spaces search) Grad-CAM spreads the evidence over every place a channel fires. Measured on
    frames whose label is a corner marker (the data of tests/test_report_saliency.py), two seeds of a small
    conv net with a max head: the marker's quadrant held 0.68 and 1.00 of Grad-CAM's map, 1.00 and 1.00 of
    HiResCAM's.
    """
    import keras
    import tensorflow as tf

    source, to_logit = _logit_head(model)
    probe = keras.Model(model.inputs, [layer.output, source])
    size = frames.shape[1:3]
    out = []
    for start in range(0, len(frames), batch):
        x = tf.constant(frames[start : start + batch, ..., None])
        with tf.GradientTape() as tape:
            fmap, head = probe(x, training=False)
            target = tf.reduce_sum(to_logit(head))
        grads = tape.gradient(target, fmap)
        cam = tf.reduce_sum(grads * fmap, axis=-1, keepdims=True)
        out.append(tf.image.resize(cam, size, method="bilinear")[..., 0].numpy())
    return np.concatenate(out).astype(np.float64)


def occlusion_geometry(size: int) -> tuple[int, int]:
    """Patch and stride: an eighth of the frame (about a particle's radius in the demo data), half-overlapping."""
    patch = max(2, size // 8)
    return patch, max(1, patch // 2)


def occlusion(model, frames: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2014): for each patch position, how much hiding it lowers the
    probability of "positive" (negative where hiding it raises it), averaged over the patches covering a pixel."""
    size = frames.shape[1]
    starts = sorted(set(range(0, size - patch + 1, stride)) | {size - patch})
    positions = [(y, x) for y in starts for x in starts]
    maps = np.zeros(frames.shape, np.float64)
    for i, frame in enumerate(frames):
        base = _predict(model, frame[None])[0]
        fill = float(np.median(frame))
        variants = np.repeat(frame[None], len(positions), axis=0)
        for k, (y, x) in enumerate(positions):
            variants[k, y : y + patch, x : x + patch] = fill
        drop = base - _predict(model, variants)
        heat, count = np.zeros((size, size)), np.zeros((size, size))
        for (y, x), d in zip(positions, drop, strict=True):
            heat[y : y + patch, x : x + patch] += d
            count[y : y + patch, x : x + patch] += 1
        maps[i] = heat / np.maximum(count, 1)
    return maps


def _predict(model, frames: np.ndarray) -> np.ndarray:
    out = [np.asarray(model(frames[s : s + OCCLUSION_BATCH, ..., None], training=False)).reshape(-1)
           for s in range(0, len(frames), OCCLUSION_BATCH)]
    return np.concatenate(out).astype(np.float64)


def _per_frame_scale(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps divided by the larger of their maxima per frame, so their strengths stay comparable."""
    clean = [np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0) for m in (positive, negative)]
    top = np.maximum(*(m.reshape(len(m), -1).max(axis=1, initial=0.0) for m in clean))
    scale = np.where(top > 0, top, 1.0)[:, None, None]
    return (clean[0] / scale).astype(np.float32), (clean[1] / scale).astype(np.float32)
