"""search.kt.stopping: the sweep's one stop policy. Median stopping and the time budget end
a trial at an epoch end, keeping its best epoch; the budget and failures in a row end the
search; through the policy itself and real (tiny) sweeps."""

from __future__ import annotations

import json

import pytest

from cnnsearch.search.config import GridTunerConfig, HyperbandTunerConfig, RandomTunerConfig
from cnnsearch.search.kt.stopping import (
    TIME_SPENT,
    MedianPruner,
    StopPolicy,
    best_up_to,
    median_at,
)
from cnnsearch.search.kt.tuners import HISTORY_FILE
from cnnsearch.search.sweep import run_sweep

HISTORY = [(0, 0.5), (1, 0.7), (2, 0.6)]


def test_best_up_to_an_epoch_in_both_directions():
    assert best_up_to(HISTORY, 1, maximize=True) == 0.7
    assert best_up_to(HISTORY, 2, maximize=False) == 0.5
    assert best_up_to(HISTORY, 3, maximize=True) is None   # it never got that far


def test_median_counts_only_trials_that_reached_the_epoch():
    histories = [HISTORY, [(0, 0.9), (1, 0.95)], [(0, 0.2)], []]
    assert median_at(histories, 1, maximize=True) == (pytest.approx(0.825), 2)
    assert median_at(histories, 0, maximize=True) == (0.5, 3)
    assert median_at([[(0, 0.1)]], 4, maximize=True) is None


def test_the_median_pruner_judges_only_after_its_warmup_and_with_enough_trials():
    pruner = MedianPruner(warmup_epochs=2, min_trials=2)
    others = [[(0, 0.8), (1, 0.9)], [(0, 0.7), (1, 0.8)]]
    mine = [(0, 0.1), (1, 0.2)]
    assert pruner.reason("val_accuracy", True, 0, mine[:1], others) is None   # warming up
    assert pruner.reason("val_accuracy", True, 1, mine, others[:1]) is None   # 1 of 2 trials
    assert pruner.reason("val_accuracy", True, 1, mine, others) == (
        "pruned: best val_accuracy 0.2000 by epoch 1 is worse than the median 0.8500 of 2 "
        "earlier trials")
    assert pruner.reason("val_loss", False, 1, mine, others) is None   # lower is better here


def test_the_policy_stops_the_search_after_failures_in_a_row_with_the_last_reason():
    policy = StopPolicy(max_seconds=None, max_failures=2)
    assert policy.search_stop([]) is None
    assert policy.search_stop(["Traceback ...\nValueError: one"]) is None
    reason = policy.search_stop(["Traceback ...\nValueError: one",
                                 "Traceback (most recent call last):\n  ...\n"
                                 "RuntimeError: two\n"])
    assert reason == ("Number of consecutive failures reached the limit of 2 "
                      "(tuner.max_consecutive_failed_trials). Last reason: RuntimeError: two")
    assert policy.search_stop([]) == reason == policy.stopped_reason   # decided once


def test_a_spent_budget_stops_the_search_and_the_running_trial_first():
    policy = StopPolicy(max_seconds=1e-9, max_failures=1, pruner=MedianPruner(1, 1))
    asked = []
    assert policy.trial_stop("val_accuracy", True, 0, [(0, 0.1)],
                             lambda: asked.append(1) or []) == TIME_SPENT
    assert asked == []   # the pruner was not asked
    assert policy.search_stop(["failed"]) == "time budget tuner.max_seconds=1e-09 reached"


def test_the_tuners_config_decides_the_pruner():
    assert StopPolicy.from_config(RandomTunerConfig()).pruner == MedianPruner(4, 3)
    assert StopPolicy.from_config(GridTunerConfig(pruning="none")).pruner is None
    hyperband = StopPolicy.from_config(HyperbandTunerConfig(max_seconds=60))
    assert hyperband.pruner is None and hyperband.search_deadline is not None


# Grid order: learning rate 0.01 (learns) then 1e-6 (barely moves), one architecture.
ONE_ARCH = dict(num_blocks=[1], filters=[16], pooling=["max"], dense_units=[32],
                learning_rate=[0.01, 1e-6])


def test_a_hopeless_trial_is_pruned_after_the_warmup(make_spec, small_space, recorder):
    spec = make_spec({**small_space, **ONE_ARCH}, final_fit={"enabled": False},
                     tuner={"name": "grid", "max_trials": 2, "pruning_warmup_epochs": 2,
                            "pruning_min_trials": 1},
                     training={"epochs": 6})
    result, _ = run_sweep(spec, [recorder])

    good, hopeless = recorder.outcomes
    assert good.status == hopeless.status == "completed"
    assert (good.epochs_run, good.stopped_early) == (6, None)
    assert hopeless.epochs_run == 2
    assert hopeless.stopped_early.startswith("pruned: best val_accuracy")
    assert "median" in hopeless.stopped_early and "of 1 earlier trials" in hopeless.stopped_early
    assert hopeless.score < good.score
    assert result.best_trial_id == good.trial_id
    # the per-epoch objective a resumed sweep judges by, beside keras-tuner's trial.json
    saved = json.loads((spec.directory / "tuner" / f"trial_{good.trial_id}" / HISTORY_FILE)
                       .read_text())
    assert [epoch for epoch, _ in saved] == list(range(6))
    assert max(value for _, value in saved) == pytest.approx(good.score)


def test_without_pruning_the_hopeless_trial_trains_to_the_end(make_spec, small_space, recorder):
    spec = make_spec({**small_space, **ONE_ARCH}, final_fit={"enabled": False},
                     tuner={"name": "grid", "max_trials": 2, "pruning": "none"},
                     training={"epochs": 4})
    run_sweep(spec, [recorder])
    assert [o.epochs_run for o in recorder.outcomes] == [4, 4]
    assert [o.stopped_early for o in recorder.outcomes] == [None, None]


def test_the_time_budget_ends_the_running_trial_with_its_best_epoch(make_spec, small_space,
                                                                    recorder):
    spec = make_spec(small_space, tuner={"max_trials": 5, "max_seconds": 0.5},
                     training={"epochs": 200})
    result, _ = run_sweep(spec, [recorder])

    (outcome,) = recorder.outcomes   # no second trial starts
    assert outcome.status == "completed" and outcome.stopped_early == "time budget spent"
    assert outcome.epochs_run < 200
    assert result.stopped_reason == "time budget tuner.max_seconds=0.5 reached"
    assert result.test_accuracy is not None   # the final fit ran on the finished trial
