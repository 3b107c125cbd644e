"""Tests for models.architecture: geometry, feasibility, params and FLOPs against Keras."""

import json
import math

import keras
import numpy as np
import pytest

from cnnsearch.models.architecture import (
    ACTIVATIONS,
    GLOBAL_POOLINGS,
    PADDINGS,
    POOLINGS,
    Architecture,
    Augmentation,
    Block,
    Head,
    output_side,
)
from cnnsearch.models.cnn import build_model

# -- output_side -------------------------------------------------------------------


@pytest.mark.parametrize("side", range(1, 20))
@pytest.mark.parametrize("window", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_output_side_matches_formulas(side, window, stride):
    assert output_side(side, window, stride, "valid") == math.floor((side - window) / stride) + 1
    assert output_side(side, window, stride, "same") == math.ceil(side / stride)


@pytest.mark.parametrize("side, window", [(8, 3), (28, 5), (32, 1), (5, 5)])
def test_output_side_valid_stride_one_is_textbook(side, window):
    assert output_side(side, window, 1, "valid") == side - window + 1


def test_output_side_below_one_when_window_does_not_fit():
    assert output_side(2, 3, 1, "valid") == 0
    assert output_side(1, 5, 2, "valid") < 1


# -- random architectures against Keras --------------------------------------------


def _random_architecture(rng: np.random.Generator) -> Architecture:
    height, width = (int(v) for v in rng.integers(8, 33, size=2))
    channels = int(rng.integers(1, 4))
    blocks = tuple(
        Block(
            filters=int(rng.integers(1, 9)),
            kernel_size=int(rng.integers(1, 6)),
            strides=int(rng.integers(1, 4)),
            padding=str(rng.choice(PADDINGS)),
            activation=str(rng.choice(ACTIVATIONS)),
            batch_norm=bool(rng.integers(0, 2)),
            convs=int(rng.integers(1, 3)),
            pooling=str(rng.choice(POOLINGS)),
            pool_size=int(rng.integers(1, 4)),
        )
        for _ in range(int(rng.integers(0, 5)))
    )
    dense = int(rng.choice([0, 0, 4, 16]))
    dropout = float(rng.choice([0.0, 0.25])) if dense else 0.0
    head = Head(str(rng.choice(GLOBAL_POOLINGS)), dense, dropout)
    return Architecture((height, width, channels), int(rng.integers(2, 11)), blocks, head)


def test_random_architectures_match_keras_shapes_and_params():
    rng = np.random.default_rng(20240601)
    feasible = infeasible = 0
    for i in range(40):
        arch = _random_architecture(rng)
        reason = arch.infeasibility()
        if reason is not None:
            infeasible += 1
            assert isinstance(reason, str) and "block" in reason, arch
            assert not arch.feasible
            with pytest.raises(ValueError, match="block"):
                build_model(arch)
            with pytest.raises(ValueError, match="block"):
                arch.layers()
            continue
        feasible += 1
        assert arch.feasible
        model = build_model(arch)
        layers = arch.layers()
        assert [layer.name for layer in layers] == [
            layer.name for layer in model.layers if layer.name != "image"
        ], arch.summary()
        for layer in layers:
            got = tuple(model.get_layer(layer.name).output.shape[1:])
            assert got == layer.output_shape, (arch.summary(), layer.name)
            assert model.get_layer(layer.name).count_params() == layer.params, (
                arch.summary(), layer.name)
        assert model.count_params() == arch.params, arch.summary()
        assert arch.flops == sum(layer.flops for layer in layers) > 0
        if i % 8 == 7:
            keras.backend.clear_session()
    keras.backend.clear_session()
    assert feasible > 5
    assert infeasible > 5


def test_specific_infeasible_pooling_message():
    block = Block(filters=4, kernel_size=3, padding="valid", pooling="max", pool_size=2)
    arch = Architecture((8, 8, 1), 10, (block, block, block))
    # 8 -conv-> 6 -pool-> 3 ; 3 -conv-> 1 -pool 2x2 on 1x1-> nothing
    assert arch.infeasibility() == "block 2 pooling 2x2 on a 1x1 map"
    assert not arch.feasible
    with pytest.raises(ValueError, match=r"infeasible architecture: block 2 pooling 2x2 on a 1x1"):
        build_model(arch)
    with pytest.raises(ValueError, match="block 2"):
        _ = arch.params


def test_specific_infeasible_conv_message():
    block = Block(filters=4, kernel_size=5, padding="valid", pooling="none")
    arch = Architecture((12, 10, 1), 10, (block, block, block))
    # 12x10 -> 8x6 -> 4x2 -> kernel 5 does not fit
    assert arch.infeasibility() == "block 3 conv 1 kernel 5x5 on a 4x2 map"
    second_conv = Block(filters=4, kernel_size=3, padding="valid", convs=2, pooling="none")
    assert Architecture((4, 4, 1), 2, (second_conv,)).infeasibility() == (
        "block 1 conv 2 kernel 3x3 on a 2x2 map")


def test_same_padding_is_always_feasible():
    block = Block(filters=2, kernel_size=7, strides=3, padding="same", pooling="sum", pool_size=3)
    arch = Architecture((8, 8, 1), 3, (block,) * 4)
    assert arch.infeasibility() is None
    assert arch.layers()[-2].output_shape == (2,)  # 1x1x2 flattened


# -- params and FLOPs by hand ------------------------------------------------------


def test_flops_and_params_of_a_tiny_network_by_hand():
    block = Block(filters=4, kernel_size=3, padding="same", pooling="none")
    arch = Architecture((8, 8, 1), 10, (block,), Head("flatten"))
    conv_flops = 2 * 3 * 3 * 1 * 4 * 8 * 8
    dense_flops = 2 * 256 * 10
    assert arch.flops == conv_flops + dense_flops
    assert arch.params == (3 * 3 * 1 * 4 + 4) + (256 * 10 + 10)
    by_name = {layer.name: layer for layer in arch.layers()}
    assert by_name["block1_conv1"].flops == conv_flops
    assert by_name["head_pool"].output_shape == (256,)
    assert by_name["output"].flops == dense_flops


def test_batch_norm_drops_conv_bias_and_adds_four_per_filter():
    block = Block(filters=4, kernel_size=3, batch_norm=True, pooling="none")
    arch = Architecture((8, 8, 1), 2, (block,), Head("avg"))
    by_name = {layer.name: layer for layer in arch.layers()}
    assert by_name["block1_conv1"].params == 3 * 3 * 1 * 4
    assert by_name["block1_bn1"].params == 4 * 4
    assert arch.params == 36 + 16 + (4 * 2 + 2)


# -- text and serialisation --------------------------------------------------------


def _example() -> Architecture:
    return Architecture(
        (28, 28, 1),
        10,
        (
            Block(filters=32, kernel_size=3, pooling="max"),
            Block(filters=64, kernel_size=5, strides=2, padding="valid", activation="gelu",
                  batch_norm=True, convs=2, pooling="sum", pool_size=3),
        ),
        Head("avg", 64, 0.25),
    )


def test_to_dict_json_from_dict_round_trip():
    arch = _example()
    text = json.dumps(arch.to_dict())
    again = Architecture.from_dict(json.loads(text))
    assert again == arch
    assert hash(again) == hash(arch)
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch


def test_round_trip_without_blocks():
    arch = Architecture((8, 8, 3), 2, ())
    assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


def test_summary_is_one_line():
    text = _example().summary()
    assert "\n" not in text
    assert text == "28x28x1 | 32c3s1-max2 64c5s2x2-bn-valid-gelu-sum3 | avg-d64-drop0.25 | 10"
    assert Architecture((8, 8, 1), 10, ()).summary() == "8x8x1 | - | flatten | 10"


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("filters", 0),
        ("filters", -8),
        ("kernel_size", 0),
        ("strides", 0),
        ("convs", 0),
        ("pool_size", 0),
        ("pooling", "median"),
        ("padding", "full"),
        ("activation", "softmax2"),
    ],
)
def test_block_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        Block(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [("global_pooling", "sum"), ("dense_units", -1), ("dropout", 1.0), ("dropout", -0.1)],
)
def test_head_rejects_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        Head(**{field: value})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"input_shape": (8, 8), "num_classes": 10}, "input_shape"),
        ({"input_shape": (8, 0, 1), "num_classes": 10}, "input_shape"),
        ({"input_shape": (8, 8, 1), "num_classes": 1}, "num_classes"),
    ],
)
def test_architecture_rejects_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Architecture(blocks=(), **kwargs)


def test_augmentation_is_in_the_summary_and_survives_a_round_trip():
    arch = Architecture((28, 28, 1), 10, (Block(16),),
                        augmentation=Augmentation("horizontal", translate=0.1))
    assert arch.summary().startswith("28x28x1 aug:flip-t0.1 | 16c3s1-max2")
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    assert arch.for_inference().augmentation == Augmentation()
    assert arch.for_inference().params == arch.params


@pytest.mark.parametrize(("changes", "message"), [
    ({"flip": "vertical"}, "flip must be one of none, horizontal"),
    ({"zoom": 1.0}, "zoom must be in [0, 1)"),
    ({"contrast": -0.1}, "contrast must be in [0, 1)"),
])
def test_a_bad_augmentation_is_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        Augmentation(**changes)
