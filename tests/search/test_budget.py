"""search/budget.py: the final fit's plan, the search's deadline, the epochs that fit,
the epoch-end stop, and the refusal of a budget that cannot hold one epoch."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from cnnsearch.search.budget import RESERVE_SECONDS, Budget, Deadline, check_one_epoch_fits
from cnnsearch.search.config import DataConfig
from cnnsearch.search.data.datasets import load_dataset
from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.stopping import TIME_SPENT, StopPolicy
from cnnsearch.search.sweep import run_sweep


def _budget(seconds: float, elapsed: float = 0.0) -> Budget:
    """A budget begun ``elapsed`` seconds ago."""
    return Budget(seconds, time.monotonic() - elapsed)


def test_the_search_ends_early_enough_for_the_planned_final_fit():
    budget = _budget(1000)
    assert budget.reserve == 20   # 2% of 1000 s, more than the 10 s floor
    budget.speeds = {"fast": 1000.0, "slow": 250.0}
    budget.plan("fast", epochs=6, images=5000)   # 6 x 5000 images at 1000 per second
    assert budget.final_fit_seconds == pytest.approx(30)
    assert budget.search_deadline == pytest.approx(budget.deadline - 20 - 30)
    budget.plan("unmeasured", epochs=1, images=5000)   # a worker's: the slowest speed
    assert budget.final_fit_seconds == pytest.approx(20)


def test_the_final_fit_trains_only_the_epochs_the_time_left_holds():
    budget = _budget(100, elapsed=80)   # 100 - 80 - 10 (reserve): 10 s left
    assert budget.reserve == RESERVE_SECONDS
    budget.speeds = {"a": 1000.0}
    assert budget.final_fit_epochs("a", planned=8, images=2000) == 4   # 2 s an epoch
    assert budget.final_fit_epochs("a", planned=3, images=2000) == 3
    assert _budget(100, elapsed=95).final_fit_epochs("a", 8, 2000) == 8   # no speed: as planned
    late = _budget(100, elapsed=95)
    late.speeds = {"a": 1000.0}
    assert late.final_fit_epochs("a", planned=8, images=2000) == 1   # at least one


def test_the_stop_policy_stops_the_search_and_the_running_trial_at_the_budget():
    budget = _budget(100)
    policy = StopPolicy(max_seconds=None, max_failures=3, budget=budget)
    assert policy.search_stop([]) is None
    assert policy.trial_stop("val_accuracy", True, 0, [(0, 0.5)], list) is None
    budget.speeds = {"a": 1.0}
    budget.plan("a", epochs=1, images=95)   # 95 s of final fit + 10 s reserve > 100 s
    assert policy.trial_stop("val_accuracy", True, 1, [(0, 0.5)], list) == TIME_SPENT
    reason = policy.search_stop([])
    assert reason.startswith("total budget budget.seconds=100") and "planned 95 s" in reason


def _tiny_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_the_deadline_stops_training_before_an_epoch_would_overrun_it():
    x = np.random.default_rng(0).random((256, 8, 8, 1), dtype=np.float32)
    y = np.zeros(256, dtype="int32")
    far = Deadline(time.monotonic() + 3600)
    _tiny_model().fit(x, y, epochs=3, callbacks=[far], verbose=0)
    assert far.stopped_at is None
    passed = Deadline(time.monotonic())
    history = _tiny_model().fit(x, y, epochs=5, callbacks=[passed], verbose=0)
    assert passed.stopped_at == 0 and len(history.history["loss"]) == 1


def test_a_budget_below_one_epoch_is_one_line_before_any_training():
    data = load_dataset(DataConfig("digits", limit=300), seed=0)
    with pytest.raises(UserError) as error:   # the reserve leaves it no time at all
        check_one_epoch_fits(_budget(RESERVE_SECONDS + 0.01), _tiny_model(), data, 32)
    message = str(error.value)
    assert "\n" not in message and message.startswith("budget.seconds=10.01 is too small")
    check_one_epoch_fits(_budget(3600), _tiny_model(), data, batch_size=32)   # fits


@pytest.mark.slow
def test_a_sweep_with_a_total_budget_ends_within_it(make_spec):
    """The whole sweep, final fit and test included, ends within budget.seconds."""
    from cnnsearch.search.config import BudgetConfig

    spec = make_spec(tuner={"max_trials": 1000}, training={"epochs": 50},
                     budget=BudgetConfig(seconds=30))
    started = time.monotonic()
    result, _ = run_sweep(spec)
    assert time.monotonic() - started <= 30
    assert result.stopped_reason.startswith("total budget budget.seconds=30")
    assert result.test_accuracy is not None and result.final_fit_epochs >= 1
