"""Build a compiled ``keras.Model`` from an :class:`Architecture`."""

from __future__ import annotations

import keras

from cnnsearch.models.architecture import OPTIMIZERS, Architecture, Augmentation, Block
from cnnsearch.models.layers import sum_pooling_2d

_POOLS = {
    "max": keras.layers.MaxPooling2D,
    "avg": keras.layers.AveragePooling2D,
}
_HEAD_POOLS = {
    "flatten": keras.layers.Flatten,
    "avg": keras.layers.GlobalAveragePooling2D,
    "max": keras.layers.GlobalMaxPooling2D,
}


def _augmentation_layers(augmentation: Augmentation) -> list[keras.layers.Layer]:
    """Built-in Keras preprocessing layers: identity outside training, no weights, and
    loadable in safe mode. Shifted-in borders are black (0), the images' background."""
    layers: list[keras.layers.Layer] = []
    if augmentation.flip != "none":
        layers.append(keras.layers.RandomFlip(augmentation.flip, name="augment_flip"))
    if augmentation.translate:
        t = augmentation.translate
        layers.append(keras.layers.RandomTranslation(t, t, fill_mode="constant",
                                                     name="augment_translate"))
    if augmentation.zoom:
        layers.append(keras.layers.RandomZoom(augmentation.zoom, fill_mode="constant",
                                              name="augment_zoom"))
    if augmentation.contrast:
        layers.append(keras.layers.RandomContrast(augmentation.contrast, value_range=(0, 1),
                                                  name="augment_contrast"))
    return layers


def _block(x, index: int, block: Block):
    """Apply one block's layers to ``x``."""
    for layer in _conv_layers(index, block):
        x = layer(x)
    if block.pooling == "sum":
        pool = sum_pooling_2d(x.shape[1:], block.pool_size, padding=block.padding,
                              name=f"block{index}_pool")
        x = pool(x)
    elif block.pooling != "none":
        x = _POOLS[block.pooling](block.pool_size, padding=block.padding,
                                  name=f"block{index}_pool")(x)
    return x


def _conv_layers(index: int, block: Block) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
    for i in range(1, block.convs + 1):
        layers.append(keras.layers.Conv2D(
            block.filters, block.kernel_size,
            strides=block.strides if i == 1 else 1,
            padding=block.padding,
            use_bias=not block.batch_norm,
            name=f"block{index}_conv{i}",
        ))
        if block.batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"block{index}_bn{i}"))
        layers.append(keras.layers.Activation(block.activation, name=f"block{index}_act{i}"))
    return layers


def build_model(arch: Architecture) -> keras.Model:
    """Create the (uncompiled) network an architecture describes.

    Layer names and output shapes match :meth:`Architecture.layers` one to one.

    Raises:
        ValueError: if the architecture is infeasible on its input shape.
    """
    reason = arch.infeasibility()
    if reason:
        raise ValueError(f"infeasible architecture: {reason}")
    inputs = keras.Input(shape=arch.input_shape, name="image")
    x = inputs
    for layer in _augmentation_layers(arch.augmentation):
        x = layer(x)
    for index, block in enumerate(arch.blocks, start=1):
        x = _block(x, index, block)
    x = _HEAD_POOLS[arch.head.global_pooling](name="head_pool")(x)
    if arch.head.dense_units:
        x = keras.layers.Dense(arch.head.dense_units, activation="relu", name="head_dense")(x)
        if arch.head.dropout:
            x = keras.layers.Dropout(arch.head.dropout, name="head_dropout")(x)
    # float32 output keeps softmax stable under a mixed-precision policy.
    outputs = keras.layers.Dense(
        arch.num_classes, activation="softmax", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name="cnn")


def inference_model(model: keras.Model, arch: Architecture) -> keras.Model:
    """``model`` (built from ``arch``) without its augmentation layers, with its weights:
    what is saved, logged and exported. The same model when it has none.

    A new model is not compiled (the optimizer's state is of no use to inference).
    """
    if not arch.augmentation.active:
        return model
    plain = build_model(arch.for_inference())
    for layer in plain.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain


def compile_model(
    model: keras.Model,
    optimizer: str = "adam",
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Compile a classifier with integer labels and accuracy.

    Args:
        model: the network from :func:`build_model`.
        optimizer: one of ``OPTIMIZERS``.
        learning_rate: the learning rate, or a Keras schedule of it.
        jit_compile: passed to ``Model.compile`` (``"auto"``, True or False).

    Returns:
        The same model, compiled.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    model.compile(
        optimizer=keras.optimizers.get({"class_name": optimizer,
                                        "config": {"learning_rate": learning_rate}}),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model
