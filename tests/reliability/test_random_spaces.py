"""Property test (hypothesis): any search space on any input shape either trains or is
refused with one clear line, never a crash.

Spaces mix valid and invalid values for every key (and sometimes a missing or unknown
key); candidates are drawn the way keras-tuner draws them (active hyperparameters only),
then either skipped with a reason or built, compiled and trained for one step.
"""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnsearch.models.cnn import build_model, compile_model
from cnnsearch.search.config import SPACE_KEYS
from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.space import SearchSpace, candidate_from_values, skip_reason

pytestmark = pytest.mark.reliability

# Per key: values a user might write, valid or not.
POOLS = {
    "num_blocks": [0, 1, 2, 3, 4], "convs_per_block": [0, 1, 2], "filters": [-1, 1, 4, 8],
    "kernel_size": [0, 1, 3, 5, 7], "strides": [0, 1, 2, 3],
    "padding": ["same", "valid", "full"], "activation": ["relu", "tanh", "swoosh"],
    "batch_norm": [False, True], "pooling": ["max", "avg", "sum", "none", "median"],
    "pool_size": [0, 1, 2, 3], "global_pooling": ["flatten", "avg", "max"],
    "dense_units": [-1, 0, 8], "dropout": [0.0, 0.5, 1.0],
    "learning_rate": [0.0, 0.001, 0.01], "optimizer": ["adam", "sgd", "adagrad9"],
}


@st.composite
def spaces(draw) -> dict:
    space = {key: draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
             for key, pool in POOLS.items()}
    change = draw(st.sampled_from(["none"] * 8 + ["missing", "unknown", "range", "budget"]))
    if change == "missing":
        del space[draw(st.sampled_from(SPACE_KEYS))]
    elif change == "unknown":
        space["colour"] = [1]
    elif change == "range":
        space["learning_rate"] = {"min": draw(st.sampled_from([-1.0, 0.001, 0.1])),
                                  "max": draw(st.sampled_from([0.0001, 0.01])),
                                  "sampling": draw(st.sampled_from(["log", "linear"]))}
    elif change == "budget":
        space["max_params"] = draw(st.sampled_from([0, 10, 100_000]))
    return space


def _one_clear_line(error: UserError) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) < 400, message
    assert "search_space" in message, message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=spaces(), height=st.integers(1, 40), width=st.integers(1, 40),
       channels=st.sampled_from([1, 3]), classes=st.integers(2, 4), seed=st.integers(0, 10**6))
def test_any_space_trains_or_is_refused_in_one_line(config, height, width, channels, classes,
                                                    seed):
    try:
        space = SearchSpace.from_config(config)
    except UserError as error:
        _one_clear_line(error)
        return
    declared = kt.HyperParameters()
    space.declare(declared)
    drawn = kt.HyperParameters()   # one draw as keras-tuner makes it: active values only
    for index, hp in enumerate(declared.space):
        drawn.merge([hp])
        if drawn.is_active(hp):
            drawn.values[hp.name] = hp.random_sample(seed + index)
    candidate = candidate_from_values(drawn.values, (height, width, channels), classes)
    reason = skip_reason(candidate, space.max_params)
    if reason is not None:
        assert reason and "\n" not in reason, reason
        return
    keras.backend.clear_session()
    model = compile_model(build_model(candidate.architecture), candidate.optimizer,
                          candidate.learning_rate, jit_compile=False)
    x = np.random.default_rng(seed).random((4, height, width, channels), dtype=np.float32)
    history = model.fit(x, np.arange(4) % classes, epochs=1, batch_size=4, verbose=0)
    assert len(history.history["loss"]) == 1
    assert model.count_params() == candidate.architecture.params
