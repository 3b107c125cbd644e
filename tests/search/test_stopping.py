"""search.stopping: median stopping and the time budget end a trial at an epoch end, keeping
its best epoch; through real (tiny) sweeps."""

from __future__ import annotations

import json

import pytest

from cnnsearch.search.kt.stopping import best_up_to, median_at
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
