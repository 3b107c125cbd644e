"""Custom Keras layers, built from `keras.ops` only so they run on every backend."""

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import keras
from keras import ops

_PADDINGS = ("valid", "same")
_DATA_FORMATS = ("channels_last", "channels_first")


def _positive_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Normalizes an int or a pair of ints to a pair of positive ints.

    Args:
        value: An int, or a sequence of two ints.
        name: Argument name, used in the error message.

    Returns:
        The pair `(value, value)` for an int, else `tuple(value)`.

    Raises:
        ValueError: If `value` is not a positive int or a pair of positive ints.
    """
    pair = (value, value) if isinstance(value, Integral) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a pair of positive ints. Received: {value!r}"
        )
    return int(pair[0]), int(pair[1])


def _pooled_length(length: int | None, pool: int, stride: int, padding: str) -> int | None:
    """Returns the pooled length of one spatial axis (`None` if `length` is unknown)."""
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    return (length - pool) // stride + 1


@keras.saving.register_keras_serializable(package="cnnsearch")
class SumPooling2D(keras.layers.Layer):
    """Sum pooling for 2D spatial data.

    Sums each `pool_size` window, moved by `strides`. Window placement and output
    size match `keras.layers.MaxPooling2D`; with `padding="same"` only the real
    elements of a border window are summed. The layer has no weights.

    Args:
        pool_size: Window size, an int or a pair `(height, width)`.
        strides: Window step, an int or a pair; defaults to `pool_size`.
        padding: `"valid"` or `"same"` (case-insensitive).
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        **kwargs: Base `keras.layers.Layer` arguments (e.g. `name`, `dtype`).

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        pool_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        padding: str = "valid",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pool_size = _positive_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _positive_pair(strides, "strides")
        self.padding = str(padding).lower()
        if self.padding not in _PADDINGS:
            raise ValueError(f"`padding` must be one of {_PADDINGS}. Received: {padding!r}")
        self.data_format = (
            keras.config.image_data_format() if data_format is None else str(data_format).lower()
        )
        if self.data_format not in _DATA_FORMATS:
            raise ValueError(
                f"`data_format` must be one of {_DATA_FORMATS} or None. Received: {data_format!r}"
            )
        self.input_spec = keras.InputSpec(ndim=4)

    def call(self, inputs: Any) -> Any:
        """Sums each pooling window of `inputs`.

        Channels are folded into the batch so that a plain one-channel `ops.conv`
        with a ones kernel does the summing: it takes any strides on every backend
        (TensorFlow's depthwise conv needs equal row and column strides), and its
        `"same"` padding is the backend pooling convention.

        Args:
            inputs: A rank-4 tensor in `self.data_format`.

        Returns:
            The pooled tensor, in `self.data_format`.
        """
        if self.data_format == "channels_last":
            inputs = ops.transpose(inputs, (0, 3, 1, 2))
        _, channels, height, width = ops.shape(inputs)
        planes = ops.reshape(inputs, (-1, height, width, 1))
        kernel = ops.ones((*self.pool_size, 1, 1), dtype=planes.dtype)
        sums = ops.conv(
            planes, kernel, strides=self.strides, padding=self.padding, data_format="channels_last"
        )
        _, out_height, out_width, _ = ops.shape(sums)
        outputs = ops.reshape(sums, (-1, channels, out_height, out_width))
        if self.data_format == "channels_last":
            outputs = ops.transpose(outputs, (0, 2, 3, 1))
        return outputs

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """Returns the output shape for `input_shape` (spatial sizes may be `None`).

        Raises:
            ValueError: If a known spatial output size would be zero or negative.
        """
        batch, *dims = input_shape
        spatial_axes = (0, 1) if self.data_format == "channels_last" else (1, 2)
        for axis, pool, stride in zip(spatial_axes, self.pool_size, self.strides, strict=True):
            dims[axis] = _pooled_length(dims[axis], pool, stride, self.padding)
            if dims[axis] is not None and dims[axis] < 1:
                raise ValueError(
                    "Computed output size would be zero or negative. Received: "
                    f"input_shape={tuple(input_shape)}, pool_size={self.pool_size}, "
                    f"strides={self.strides}, padding={self.padding!r}"
                )
        return (batch, *dims)

    def get_config(self) -> dict[str, Any]:
        """Returns the layer configuration, for serialization."""
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
        }
