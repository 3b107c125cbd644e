"""Tests for search.kt.space: presets, keras-tuner declaration, candidates and one-line errors."""

from pathlib import Path

import keras_tuner as kt
import pytest

from cnnsearch.search.config import AUGMENTATION_KEYS, BLOCK_KEYS, SPACE_KEYS
from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.space import SearchSpace, candidate_from_values, skip_reason
from tests.conftest import load_space

PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "search_space"
PRESETS = sorted(PRESET_DIR.glob("*.yaml"))


def _preset(name: str) -> dict:
    return load_space(name)


def _space(name: str = "default", **changes) -> SearchSpace:
    return SearchSpace.from_config({**_preset(name), **changes})


def _error(**changes) -> str:
    config = {**_preset("default"), **changes}
    with pytest.raises(UserError) as info:
        SearchSpace.from_config(config)
    return str(info.value)


# -- presets -------------------------------------------------------------------------


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"default", "small", "wide"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_declares(path):
    space = SearchSpace.from_config(_preset(path.stem))
    assert set(space.dims) == {*SPACE_KEYS, *(f"augmentation.{k}" for k in AUGMENTATION_KEYS)}
    assert space.grid_size() >= 1
    hp = kt.HyperParameters()
    values = space.declare(hp)
    assert values["num_blocks"] in space.dims["num_blocks"].candidates()
    names = {h.name for h in hp.space}
    for b in range(1, space.max_blocks + 1):
        assert f"block{b}_filters" in names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_block_count_of_every_preset_gives_a_matching_candidate(path):
    space = SearchSpace.from_config(_preset(path.stem))
    hp = kt.HyperParameters()
    space.declare(hp)
    for n in space.dims["num_blocks"].candidates():
        hp.values["num_blocks"] = n
        hp.ensure_active_values()
        values = space.declare(hp)
        candidate = candidate_from_values(values, (28, 28, 1), 10)
        assert len(candidate.architecture.blocks) == n
        assert not [k for k in values if k.startswith(f"block{n + 1}_")]
        assert candidate.optimizer == values["optimizer"]
        assert candidate.learning_rate == values["learning_rate"]


# -- declare ------------------------------------------------------------------------


# A fixed 3-block space, so these tests do not move when a preset is retuned.
THREE_BLOCKS = {"num_blocks": [1, 2, 3], "filters": [16, 32, 64], "kernel_size": [3, 5],
                "dense_units": [0, 64, 128], "batch_norm": [False, True],
                "learning_rate": {"min": 0.0003, "max": 0.01, "sampling": "log"}}


def test_default_names_defaults_and_conditions():
    space = _space(**THREE_BLOCKS)
    hp = kt.HyperParameters()
    values = space.declare(hp)
    by_name = {h.name: h for h in hp.space}
    for name in ("num_blocks", "block1_filters", "block3_filters", "block3_pool_size",
                 "global_pooling", "dense_units", "dropout", "learning_rate", "optimizer"):
        assert name in by_name
    for b in (1, 2, 3):
        assert {f"block{b}_{key}" for key in BLOCK_KEYS} <= set(by_name)
    # Defaults: the first value of each choice, the minimum of each range.
    assert by_name["num_blocks"].default == 1
    assert by_name["block1_filters"].default == 16
    assert by_name["learning_rate"].default == pytest.approx(3e-4)
    assert values["num_blocks"] == 1
    assert values["block1_filters"] == 16
    assert values["block1_pooling"] == "max"
    assert values["dense_units"] == 0
    # Conditions: blocks on num_blocks, pool size on pooling, dropout on dense_units.
    block2 = by_name["block2_filters"].conditions[0].get_config()
    assert block2 == {"name": "num_blocks", "values": [2, 3]}
    pool = [c.get_config() for c in by_name["block1_pool_size"].conditions]
    assert {"name": "block1_pooling", "values": ["max", "avg", "sum"]} in pool
    dropout = [c.get_config() for c in by_name["dropout"].conditions]
    assert dropout == [{"name": "dense_units", "values": [64, 128]}]
    # Inactive by default: blocks 2-3, and dropout without a dense layer.
    assert "block2_filters" not in values
    assert "dropout" not in values


def test_one_block_has_no_values_for_blocks_two_and_three():
    space = _space(**THREE_BLOCKS)
    hp = kt.HyperParameters()
    space.declare(hp)
    hp.values["num_blocks"] = 3
    hp.ensure_active_values()
    three = space.declare(hp)
    assert {"block2_filters", "block3_filters", "block3_pooling"} <= set(three)
    hp.values["num_blocks"] = 1
    hp.ensure_active_values()
    one = space.declare(hp)
    assert one["num_blocks"] == 1
    assert not [k for k in one if k.startswith(("block2_", "block3_"))]
    assert not [k for k in hp.values if k.startswith(("block2_", "block3_"))]
    assert [k for k in one if k.startswith("block1_")]


def test_pool_size_and_dropout_follow_their_parents():
    space = _space()
    hp = kt.HyperParameters()
    space.declare(hp)
    hp.values["block1_pooling"] = "none"
    hp.values["dense_units"] = 64
    hp.ensure_active_values()
    values = space.declare(hp)
    assert "block1_pool_size" not in values
    assert values["dropout"] in (0.0, 0.25, 0.5)
    candidate = candidate_from_values(values, (8, 8, 1), 10)
    assert candidate.architecture.blocks[0].pooling == "none"
    assert candidate.architecture.head.dense_units == 64
    assert candidate.architecture.head.dropout == values["dropout"]


def test_fixed_value_before_declare_overrides():
    space = _space()
    hp = kt.HyperParameters()
    hp.Fixed("num_blocks", 2)
    hp.Fixed("block2_filters", 64)
    hp.Fixed("optimizer", "adam")
    values = space.declare(hp)
    assert values["num_blocks"] == 2
    assert values["block2_filters"] == 64
    assert "block3_filters" not in values
    arch = candidate_from_values(values, (8, 8, 1), 10).architecture
    assert len(arch.blocks) == 2
    assert arch.blocks[1].filters == 64


def test_single_value_list_is_fixed():
    space = _space("small")
    hp = kt.HyperParameters()
    space.declare(hp)
    by_name = {h.name: h for h in hp.space}
    assert isinstance(by_name["learning_rate"], kt.engine.hyperparameters.Fixed)
    assert by_name["learning_rate"].value == 0.003


@pytest.mark.parametrize(
    "key, value, name",
    [
        ("dropout", [0, 0.5], "dropout"),
        ("learning_rate", [1, 0.01], "learning_rate"),
        ("batch_norm", [False, 1], "block1_batch_norm"),
    ],
)
def test_mixed_int_and_float_choices_declare(key, value, name):
    # YAML `dropout: [0, 0.5]` gives an int and a float; keras-tuner's Choice takes one type.
    space = _space(**{key: value, "dense_units": [64]})
    hp = kt.HyperParameters()
    values = space.declare(hp)
    assert values[name] == value[0]
    candidate = candidate_from_values(values, (8, 8, 1), 10)
    assert candidate.architecture.head.dense_units == 64


# -- candidates and skip reasons --------------------------------------------------------


def _values(num_blocks: int, **changes) -> dict:
    values = {"num_blocks": num_blocks, "global_pooling": "flatten", "dense_units": 0,
              "learning_rate": 1e-3, "optimizer": "adam"}
    for b in range(1, num_blocks + 1):
        values.update({
            f"block{b}_convs_per_block": 1, f"block{b}_filters": 8, f"block{b}_kernel_size": 3,
            f"block{b}_strides": 1, f"block{b}_padding": "same", f"block{b}_activation": "relu",
            f"block{b}_batch_norm": False, f"block{b}_pooling": "max", f"block{b}_pool_size": 2,
        })
    return {**values, **changes}


@pytest.mark.parametrize("num_blocks", [1, 2, 3])
def test_candidate_from_values(num_blocks):
    candidate = candidate_from_values(_values(num_blocks), (8, 8, 1), 10)
    assert len(candidate.architecture.blocks) == num_blocks
    assert candidate.architecture.input_shape == (8, 8, 1)
    assert candidate.architecture.num_classes == 10
    assert candidate.optimizer == "adam"
    assert candidate.learning_rate == 1e-3
    assert skip_reason(candidate, max_params=None) is None
    assert skip_reason(candidate, max_params=10**6) is None


def test_skip_reason_for_infeasible_candidate():
    changes = {f"block{b}_{key}": value for b in (1, 2, 3)
               for key, value in (("padding", "valid"), ("kernel_size", 5))}
    candidate = candidate_from_values(_values(3, **changes), (8, 8, 1), 10)
    reason = skip_reason(candidate, max_params=None)
    assert reason == "block 2 conv 1 kernel 5x5 on a 2x2 map"


def test_skip_reason_for_too_many_parameters():
    candidate = candidate_from_values(_values(1, dense_units=64), (8, 8, 1), 10)
    params = candidate.architecture.params
    assert skip_reason(candidate, max_params=params) is None
    reason = skip_reason(candidate, max_params=params - 1)
    assert reason is not None
    assert "max_params" in reason and f"{params:,}" in reason


# -- one-line user errors ---------------------------------------------------------------


def _without(key: str) -> dict:
    config = _preset("default")
    del config[key]
    return config


@pytest.mark.parametrize(
    "changes, key, allowed",
    [
        ({"fliters": [16]}, "fliters", "filters"),
        ({"num_blocks": []}, "num_blocks", None),
        ({"filters": []}, "filters", None),
        ({"filters": {"min": 64, "max": 16}}, "filters", None),
        ({"dropout": {"min": 0.5, "max": 0.1}}, "dropout", None),
        ({"pooling": ["max", "median"]}, "pooling", "max, avg, sum, none"),
        ({"padding": ["full"]}, "padding", "same, valid"),
        ({"global_pooling": ["sum"]}, "global_pooling", "flatten, avg, max"),
        ({"optimizer": ["adamax"]}, "optimizer", "adam"),
        ({"activation": ["softmax2"]}, "activation", "relu"),
        ({"filters": [0]}, "filters", "positive"),
        ({"filters": [16, -8]}, "filters", "positive"),
        ({"filters": {"min": 0, "max": 64}}, "filters", "positive"),
        ({"kernel_size": [0]}, "kernel_size", "positive"),
        ({"strides": [0]}, "strides", "positive"),
        ({"num_blocks": [0, 1]}, "num_blocks", "positive"),
        ({"pool_size": [2.5]}, "pool_size", "positive"),
        ({"dense_units": [-1]}, "dense_units", ">= 0"),
        ({"dropout": [1.5]}, "dropout", "[0, 1)"),
        ({"dropout": {"min": 0.0, "max": 1.5}}, "dropout", "[0, 1)"),
        ({"learning_rate": [0]}, "learning_rate", "> 0"),
        ({"learning_rate": {"min": 0, "max": 0.1, "sampling": "log"}}, "learning_rate", "> 0"),
        ({"max_params": 0}, "max_params", "positive"),
        ({"max_params": -5}, "max_params", "positive"),
        ({"pooling": {"min": 1, "max": 2}}, "pooling", "max, avg, sum, none"),
        ({"batch_norm": ["yes"]}, "batch_norm", "False, True"),
        ({"filters": 32}, "filters", "list"),
        ({"filters": {"low": 1, "high": 2}}, "filters", "min and max"),
        ({"filters": {"min": 8, "max": 64, "step": 0}}, "filters", "step"),
        ({"learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "exp"}}, "learning_rate",
         "linear, log"),
        ({"padding": ["same", 1]}, "padding", "same, valid"),
        ({"augmentation": {"flip": ["vertical"]}}, "augmentation.flip", "none, horizontal"),
        ({"augmentation": {"translate": [1.5]}}, "augmentation.translate", "[0, 1)"),
        ({"augmentation": {"zoom": {"min": -0.1, "max": 0.2}}}, "augmentation.zoom", "[0, 1)"),
        ({"augmentation": {"rotate": [0.1]}}, "augmentation", "flip, translate, zoom"),
        ({"augmentation": [0.1]}, "augmentation", "mapping"),
    ],
)
def test_bad_config_is_one_line_user_error(changes, key, allowed):
    message = _error(**changes)
    assert "\n" not in message
    assert key in message
    if allowed is not None:
        assert allowed in message


@pytest.mark.parametrize("key", ["num_blocks", "pooling", "learning_rate"])
def test_missing_key_is_one_line_user_error(key):
    with pytest.raises(UserError) as info:
        SearchSpace.from_config(_without(key))
    message = str(info.value)
    assert "\n" not in message
    assert key in message
    assert "missing" in message


def test_unknown_key_lists_allowed_keys():
    message = _error(colour=["red"])
    assert "'colour'" in message
    for key in SPACE_KEYS:
        assert key in message


def test_max_params_is_optional():
    assert SearchSpace.from_config(_without("max_params")).max_params is None
    assert _space(max_params=1000).max_params == 1000


# -- augmentation --------------------------------------------------------------------


def test_augmentation_keys_are_drawn_and_reach_the_candidate():
    space = _space(augmentation={"flip": ["horizontal"], "translate": [0.0, 0.1],
                                 "zoom": {"min": 0.0, "max": 0.2, "step": 0.1}})
    hp = kt.HyperParameters()
    values = space.declare(hp)
    assert {"augment_flip", "augment_translate", "augment_zoom",
            "augment_contrast"} <= {h.name for h in hp.space}
    values |= {"augment_translate": 0.1, "augment_zoom": 0.2}
    augmentation = candidate_from_values(values, (8, 8, 1), 10).architecture.augmentation
    assert (augmentation.flip, augmentation.translate, augmentation.zoom,
            augmentation.contrast) == ("horizontal", 0.1, 0.2, 0.0)


def test_a_space_without_augmentation_trains_on_the_images_as_they_are():
    space = _space(augmentation=None)
    values = space.declare(kt.HyperParameters())
    assert not candidate_from_values(values, (8, 8, 1), 10).architecture.augmentation.active


@pytest.mark.parametrize(("data", "flips"), [("digits", ["none"]), ("mnist", ["none"]),
                                             ("fashion_mnist", ["horizontal", "none"])])
def test_each_data_set_has_its_own_augmentation_defaults(data, flips):
    """No flip for digits: a mirrored digit is another digit, or none."""
    assert load_space("default", data)["augmentation"]["flip"] == flips
