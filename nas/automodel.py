"""The `autokeras` tuner: the space's `autokeras:` section becomes an AutoKeras graph (ImageInput ->
ImageBlock -> ClassificationHead), used as the HyperModel of our own tuner. So an AutoKeras search gets the
same oracle, run log, exact objective, checkpoints and export as every other tuner, and stays offline:
only the from-scratch block types (vanilla, resnet, xception with pretrained=False) are offered.
"""

from __future__ import annotations

import keras
import keras_tuner
import numpy as np

from nas.models import PR_AUC_METRIC, PRECISION_METRIC
from nas.space import SearchSpace


class AutoKerasHyperModel(keras_tuner.HyperModel):
    """Builds one AutoKeras architecture per trial from the space's autokeras.* dimensions plus the
    hyperparameters AutoKeras's blocks declare themselves (they appear in the trial record too)."""

    def __init__(self, space: SearchSpace, image_size: int, recall_floor: float, train_frames: int = 0,
                 batch_size: int = 32, epochs: int = 1):
        super().__init__(name=space.name)
        self.space, self.image_size, self.recall_floor = space, image_size, recall_floor
        self.train_frames, self.batch_size, self.epochs = train_frames, batch_size, epochs

    def build(self, hp) -> keras.Model:
        import autokeras as ak

        keras.backend.clear_session()  # AutoKeras names hyperparameters after block instances: keep them stable
        v = self.space.resolve(hp)
        inputs = ak.ImageInput()
        node = inputs
        if v["autokeras.normalize"]:
            node = ak.Normalization()(node)
        if v["autokeras.augment"]:
            node = ak.ImageAugmentation()(node)
        kind = v["autokeras.block_type"]
        # built directly rather than through ak.ImageBlock, which would search `pretrained` and download
        block = {"vanilla": lambda: ak.ConvBlock(), "resnet": lambda: ak.ResNetBlock(pretrained=False),
                 "xception": lambda: ak.XceptionBlock(pretrained=False)}[kind]()
        head = ak.ClassificationHead(
            num_classes=2, loss=keras.losses.BinaryCrossentropy(), dropout=v["autokeras.dropout"],
            metrics=[keras.metrics.PrecisionAtRecall(self.recall_floor, name=PRECISION_METRIC),
                     keras.metrics.AUC(curve="PR", name=PR_AUC_METRIC)],
        )
        outputs = head(block(node))
        graph = ak.graph.Graph(inputs=inputs, outputs=outputs)
        inputs.shape, head.shape = (self.image_size, self.image_size, 1), (1,)
        graph.num_samples, graph.epochs = max(1, self.train_frames), self.epochs  # for its AdamW decay schedule
        return graph.build(hp)


def adapt_preprocessing(model: keras.Model, frames: np.ndarray) -> None:
    """Normalization layers that AutoKeras adds must see the data before training (AutoKeras's tuner
    adapts them from its dataset; ours does it from a sample of training frames)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.adapt(frames)
