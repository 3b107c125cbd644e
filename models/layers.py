"""Sum pooling from built-in Keras layers only.

Keras has no sum-pooling layer. A custom layer class would make every saved model
need cnnsearch to load; this one is a small ``keras.Sequential`` of built-in layers
(ZeroPadding2D, AveragePooling2D, Rescaling: no weights, no Lambda), so a saved
``.keras`` file or MLflow model loads with stock Keras, in safe mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

_PADDINGS = ("valid", "same")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in pair):
        raise ValueError(f"`{name}` must be a positive int or a pair of positive ints, "
                         f"got {value!r}")
    return pair


def same_padding(side: int, window: int, stride: int) -> tuple[int, int]:
    """Zeros before and after one axis so that ``valid`` windows sit where ``same`` puts them.

    The TensorFlow/Keras convention: ``ceil(side / stride)`` outputs, the extra zero
    (if the total is odd) after the data.
    """
    total = max((math.ceil(side / stride) - 1) * stride + window - side, 0)
    return total // 2, total - total // 2


def sum_pooling_2d(input_shape: Sequence[int], pool_size: int | Sequence[int],
                   strides: int | Sequence[int] | None = None, padding: str = "valid",
                   name: str | None = None) -> keras.Sequential:
    """Sum of each pooling window of a channels-last feature map, as built-in layers.

    Window placement and output size are those of ``keras.layers.MaxPooling2D``; with
    ``padding="same"`` only the real elements of a border window are summed (the
    zeros added for it sum to nothing). Average pooling over the zero-padded map times
    the window area is exactly that sum.

    Args:
        input_shape: ``(height, width, channels)`` of the map it will pool (known sizes:
            the ``same`` padding amounts depend on them).
        pool_size: window size, an int or a pair ``(height, width)``.
        strides: window step, an int or a pair; defaults to ``pool_size``.
        padding: ``"valid"`` or ``"same"``.
        name: name of the returned block (its layers are named after it).

    Returns:
        An unbuilt-weights ``keras.Sequential`` (no weights at all) to call on the map.

    Raises:
        ValueError: for a bad argument, an unknown spatial size, or a window that does
            not fit the map.
    """
    height, width, channels = input_shape
    if height is None or width is None:
        raise ValueError(f"sum pooling needs known spatial sizes, got {tuple(input_shape)}")
    window = _pair(pool_size, "pool_size")
    step = window if strides is None else _pair(strides, "strides")
    padding = str(padding).lower()
    if padding not in _PADDINGS:
        raise ValueError(f"`padding` must be one of {_PADDINGS}, got {padding!r}")
    name = name or "sum_pool"
    layers: list[keras.layers.Layer] = []
    if padding == "same":
        pads = (same_padding(height, window[0], step[0]), same_padding(width, window[1], step[1]))
        if any(sum(pad) for pad in pads):
            layers.append(keras.layers.ZeroPadding2D(pads, name=f"{name}_pad"))
    elif window[0] > height or window[1] > width:
        raise ValueError(f"pool_size {window} does not fit a {height}x{width} map")
    layers += [keras.layers.AveragePooling2D(window, step, padding="valid", name=f"{name}_avg"),
               keras.layers.Rescaling(float(window[0] * window[1]), name=f"{name}_scale")]
    return keras.Sequential([keras.Input((height, width, channels)), *layers], name=name)
