"""Tests for cnnsearch.models.layers.sum_pooling_2d: exact sums from built-in layers."""

import math

import keras
import numpy as np
import pytest

from cnnsearch.models.layers import same_padding, sum_pooling_2d

SIZES = [(7, 7), (8, 8), (9, 9), (5, 8)]
POOL_SIZES = [1, 2, 3, (2, 3)]
STRIDES = [None, 1, 2, 3, (1, 2)]
BUILT_IN = (keras.layers.ZeroPadding2D, keras.layers.AveragePooling2D, keras.layers.Rescaling)
PADDINGS = ["valid", "same"]


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def reference_sum_pool(x, pool_size, strides, padding):
    """Sliding-window sum of a channels_last batch, padded by the TF SAME convention."""
    (ph, pw) = _pair(pool_size)
    (sh, sw) = _pair(pool_size if strides is None else strides)
    _, h, w, _ = x.shape
    if padding == "same":
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
        pad_h = max((oh - 1) * sh + ph - h, 0)
        pad_w = max((ow - 1) * sw + pw - w, 0)
        x = np.pad(
            x,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
        )
    else:
        oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            window = x[:, i * sh : i * sh + ph, j * sw : j * sw + pw, :]
            out[:, i, j, :] = window.sum(axis=(1, 2), dtype=np.float64)
    return out


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("strides", STRIDES)
@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("size", SIZES)
def test_matches_numpy_reference(size, pool_size, strides, padding):
    x = _random((2, *size, 3))
    pool = sum_pooling_2d((*size, 3), pool_size, strides, padding)
    got = keras.ops.convert_to_numpy(pool(x))
    np.testing.assert_allclose(
        got, reference_sum_pool(x, pool_size, strides, padding), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("strides", STRIDES)
@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("size", SIZES)
def test_output_shape_matches_max_pooling(size, pool_size, strides, padding):
    input_shape = (None, *size, 3)
    expected = keras.layers.MaxPooling2D(pool_size, strides, padding).compute_output_shape(
        input_shape)
    pool = sum_pooling_2d((*size, 3), pool_size, strides, padding)
    assert pool(keras.Input(batch_shape=input_shape)).shape == expected


@pytest.mark.parametrize("padding", PADDINGS)
def test_only_built_in_layers_and_no_weights(padding):
    pool = sum_pooling_2d((7, 7, 4), 2, padding=padding, name="block1_pool")
    assert pool.name == "block1_pool"
    assert all(type(layer) in BUILT_IN for layer in pool.layers)
    assert pool.count_params() == 0 and pool.weights == []


@pytest.mark.parametrize(("side", "window", "stride", "pads"), [
    (7, 2, 2, (0, 1)), (8, 2, 2, (0, 0)), (8, 3, 2, (0, 1)), (5, 3, 1, (1, 1)), (1, 3, 3, (1, 1)),
])
def test_same_padding_follows_the_keras_convention(side, window, stride, pads):
    assert same_padding(side, window, stride) == pads


@pytest.mark.parametrize(("args", "words"), [
    (((2, 8, 1), 3, None, "valid"), "does not fit"),
    (((None, 8, 1), 2, None, "same"), "known spatial sizes"),
    (((8, 8, 1), 0, None, "valid"), "pool_size"),
    (((8, 8, 1), 2, (1, 2, 3), "valid"), "strides"),
    (((8, 8, 1), 2, None, "full"), "padding"),
])
def test_bad_arguments_raise_value_error(args, words):
    with pytest.raises(ValueError, match=words):
        sum_pooling_2d(*args)
