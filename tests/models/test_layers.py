"""Tests for models.layers.SumPooling2D."""

import math

import keras
import numpy as np
import pytest

from models.layers import SumPooling2D

SIZES = [(7, 7), (8, 8), (9, 9), (5, 8)]
POOL_SIZES = [1, 2, 3, (2, 3)]
STRIDES = [None, 1, 2, 3, (1, 2)]
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
def test_matches_numpy_reference_channels_last(size, pool_size, strides, padding):
    x = _random((2, *size, 3))
    layer = SumPooling2D(pool_size, strides, padding, data_format="channels_last")
    got = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(
        got, reference_sum_pool(x, pool_size, strides, padding), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("size", "pool_size", "strides", "padding"),
    [((7, 7), 2, None, "same"), ((5, 8), (2, 3), 2, "valid"), ((8, 9), 3, (1, 2), "same")],
)
def test_matches_numpy_reference_channels_first(size, pool_size, strides, padding):
    x = _random((2, *size, 3))
    layer = SumPooling2D(pool_size, strides, padding, data_format="channels_first")
    got = keras.ops.convert_to_numpy(layer(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(
        np.transpose(got, (0, 2, 3, 1)),
        reference_sum_pool(x, pool_size, strides, padding),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("strides", STRIDES)
@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize("size", [*SIZES, (None, 8), (None, None)])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_output_shape_matches_max_pooling(size, pool_size, strides, padding, data_format):
    input_shape = (None, *size, 3) if data_format == "channels_last" else (None, 3, *size)
    args = (pool_size, strides, padding, data_format)
    expected = keras.layers.MaxPooling2D(*args).compute_output_shape(input_shape)
    layer = SumPooling2D(*args)
    assert layer.compute_output_shape(input_shape) == expected
    assert layer(keras.Input(batch_shape=input_shape)).shape == expected


def test_too_small_input_raises_like_max_pooling():
    with pytest.raises(ValueError, match="zero or negative"):
        SumPooling2D(3, data_format="channels_last").compute_output_shape((None, 2, 8, 1))


@pytest.mark.parametrize("pool_size", [2, 3, (2, 3)])
@pytest.mark.parametrize("strides", [None, 1, (1, 2)])
def test_valid_equals_average_pooling_times_window_area(pool_size, strides):
    x = _random((2, 9, 8, 4), seed=1)
    args = (pool_size, strides, "valid", "channels_last")
    area = math.prod(_pair(pool_size))
    expected = keras.ops.convert_to_numpy(keras.layers.AveragePooling2D(*args)(x)) * area
    got = keras.ops.convert_to_numpy(SumPooling2D(*args)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_size", [2, 3, (2, 3)])
@pytest.mark.parametrize("strides", [None, 1, 2])
def test_same_equals_average_pooling_times_real_count(pool_size, strides):
    """Windows sit where AveragePooling2D puts them; padding adds nothing to a sum."""
    x = _random((2, 8, 7, 4), seed=2)
    args = (pool_size, strides, "same", "channels_last")
    layer = SumPooling2D(*args)
    counts = keras.ops.convert_to_numpy(layer(np.ones_like(x)))
    average = keras.ops.convert_to_numpy(keras.layers.AveragePooling2D(*args)(x))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), average * counts, rtol=1e-5, atol=1e-5
    )


def test_unknown_spatial_sizes_at_call_time():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, SumPooling2D(3, 2, "same")(inputs))
    for i, size in enumerate([(7, 7), (9, 8), (5, 6)]):
        x = _random((1, *size, 2), seed=i)
        np.testing.assert_allclose(
            model.predict(x, verbose=0), reference_sum_pool(x, 3, 2, "same"), rtol=1e-5, atol=1e-5
        )


def test_has_no_weights():
    layer = SumPooling2D(2)
    layer.build((None, 8, 8, 3))
    assert layer.weights == []
    assert layer.count_params() == 0


def test_defaults_and_normalization():
    layer = SumPooling2D([2, 3], padding="SAME")
    assert layer.pool_size == (2, 3)
    assert layer.strides == (2, 3)
    assert layer.padding == "same"
    assert layer.data_format == keras.config.image_data_format()


def test_config_round_trip():
    layer = SumPooling2D((2, 3), strides=(1, 2), padding="Same", data_format="channels_first")
    config = layer.get_config()
    assert config["pool_size"] == (2, 3)
    assert config["strides"] == (1, 2)
    assert config["padding"] == "same"
    assert config["data_format"] == "channels_first"
    clone = SumPooling2D.from_config(config)
    assert clone.get_config() == config


def test_save_load_round_trip(tmp_path):
    inputs = keras.Input((9, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = SumPooling2D((2, 3), strides=2, padding="same")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)

    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    assert any(isinstance(layer, SumPooling2D) for layer in loaded.layers)
    x = _random((2, 9, 8, 3), seed=3)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_size": 2, "padding": "full"}, r"`padding` must be one of \('valid', 'same'\)"),
        ({"pool_size": 0}, "`pool_size` must be a positive int"),
        ({"pool_size": (2, -1)}, "`pool_size` must be a positive int"),
        ({"pool_size": (2, 2, 2)}, "`pool_size` must be a positive int"),
        ({"pool_size": 2, "strides": 0}, "`strides` must be a positive int"),
        ({"pool_size": 2, "strides": (1, 0)}, "`strides` must be a positive int"),
        ({"pool_size": 2, "data_format": "NHWC"}, "`data_format` must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SumPooling2D(**kwargs)
