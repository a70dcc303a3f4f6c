"""Where a model looks: a class-activation map on the last convolutional feature map of a Keras functional
model (HiResCAM, a Grad-CAM variant), and
occlusion (how much the evidence drops when a patch is hidden) for models without one at the top level,
such as an ensemble of sub-models or a dense-only network.

Each map explains the model's own decision for that frame: evidence for "positive" where it called the frame
positive, for "negative" where it called it negative, so a false positive's map shows what convinced it.
"""

from __future__ import annotations

import numpy as np

OCCLUSION_BATCH = 256


def saliency_maps(model, frames: np.ndarray, called: np.ndarray) -> tuple[np.ndarray, str]:
    """Maps (n, S, S) in [0, 1], each scaled to its own maximum, and a sentence saying how they were made.

    frames: (n, S, S) normalized as the model sees them; called: the model's decision per frame."""
    frames = np.asarray(frames, dtype=np.float32)
    called = np.asarray(called, dtype=bool)
    if len(frames) == 0:
        return np.zeros_like(frames), "no frames to explain"
    layer = last_feature_map(model)
    if layer is not None:
        maps = hires_cam(model, layer, frames, called)
        return maps, (f"HiResCAM (Grad-CAM without averaging the gradients over the map) on layer `{layer.name}`, "
                      "the last convolutional feature map")
    patch, stride = occlusion_geometry(frames.shape[1])
    maps = occlusion(model, frames, called, patch, stride)
    return maps, (f"occlusion: the drop in the model's evidence when a {patch}x{patch} px patch is replaced by the "
                  f"frame's median, stride {stride} px (the model has no convolutional layer at its top level)")


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


def hires_cam(model, layer, frames: np.ndarray, called: np.ndarray, batch: int = 64) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): the feature maps times the gradient of the decision's logit, element
    by element, summed over channels, rectified, upsampled to the frame and scaled to [0, 1] per frame.

    Grad-CAM (Selvaraju et al. 2017) first averages each channel's gradient over the map. Under a
    global-average head feeding the output layer directly the two maps are the same; under a global-max head (which
    our spaces search) Grad-CAM spreads the evidence over every place a channel fires. Measured on frames
    whose label is a corner marker (the data of tests/test_report_saliency.py), two seeds of a small conv net
    with a max head: the marker's quadrant held 0.68 and 1.00 of Grad-CAM's map, 1.00 and 1.00 of HiResCAM's.
    """
    import keras
    import tensorflow as tf

    source, to_logit = _logit_head(model)
    probe = keras.Model(model.inputs, [layer.output, source])
    size = frames.shape[1:3]
    out = []
    for start in range(0, len(frames), batch):
        x = tf.constant(frames[start : start + batch, ..., None])
        sign = tf.constant(np.where(called[start : start + batch], 1.0, -1.0), tf.float32)
        with tf.GradientTape() as tape:
            fmap, head = probe(x, training=False)
            logit = tf.reshape(to_logit(head), [-1])
            target = tf.reduce_sum(sign * logit)
        grads = tape.gradient(target, fmap)
        cam = tf.nn.relu(tf.reduce_sum(grads * fmap, axis=-1, keepdims=True))
        out.append(tf.image.resize(cam, size, method="bilinear")[..., 0].numpy())
    return _per_frame_max(np.concatenate(out))


def occlusion_geometry(size: int) -> tuple[int, int]:
    """Patch and stride: an eighth of the frame (about a particle's radius in the demo data), half-overlapping."""
    patch = max(2, size // 8)
    return patch, max(1, patch // 2)


def occlusion(model, frames: np.ndarray, called: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Occlusion sensitivity (Zeiler & Fergus 2014): for each patch position, how much hiding it lowers the
    probability of the decision taken; averaged over the patches covering each pixel, scaled per frame."""
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
        prob = _predict(model, variants)
        drop = (base - prob) if called[i] else (prob - base)
        heat, count = np.zeros((size, size)), np.zeros((size, size))
        for (y, x), d in zip(positions, np.clip(drop, 0, None), strict=True):
            heat[y : y + patch, x : x + patch] += d
            count[y : y + patch, x : x + patch] += 1
        maps[i] = heat / np.maximum(count, 1)
    return _per_frame_max(maps)


def _predict(model, frames: np.ndarray) -> np.ndarray:
    out = [np.asarray(model(frames[s : s + OCCLUSION_BATCH, ..., None], training=False)).reshape(-1)
           for s in range(0, len(frames), OCCLUSION_BATCH)]
    return np.concatenate(out).astype(np.float64)


def _per_frame_max(maps: np.ndarray) -> np.ndarray:
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = maps.reshape(len(maps), -1).max(axis=1, initial=0.0)
    return (maps / np.where(top > 0, top, 1.0)[:, None, None]).astype(np.float32)
