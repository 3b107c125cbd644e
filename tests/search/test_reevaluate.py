"""search/reevaluate.py: the winner by the mean of its scores, and a real re-evaluation."""

from __future__ import annotations

import pytest

from cnnsearch.search.config import ReevaluateConfig
from cnnsearch.search.reevaluate import best_by_mean
from cnnsearch.search.sweep import run_sweep


def test_the_winner_is_the_best_mean_not_the_luckiest_search_score():
    scores = {"lucky": (0.95, 0.85), "steady": (0.92, 0.91), "poor": (0.80, 0.82)}
    assert best_by_mean(scores, maximize=True) == "steady"
    assert best_by_mean({"a": (0.30, 0.50), "b": (0.35, 0.36)}, maximize=False) == "b"
    assert best_by_mean({"first": (0.9, 0.9), "second": (0.9, 0.9)}, True) == "first"
    assert best_by_mean({}, maximize=True) is None


def test_the_k_best_trials_are_trained_again_and_the_winner_is_their_best_mean(make_spec,
                                                                               recorder):
    spec = make_spec(tuner={"max_trials": 4}, training={"epochs": 2},
                     reevaluate=ReevaluateConfig(top_k=2))
    result, _ = run_sweep(spec, [recorder])
    names = [event for event, *_ in recorder.events]
    again = recorder.of("trial_reevaluated")
    assert len(again) == 2
    assert names.index("trial_reevaluated") > max(
        i for i, name in enumerate(names) if name == "trial_ended")
    assert names.index("search_ended") > max(
        i for i, name in enumerate(names) if name == "trial_reevaluated")
    search_scores = {outcome.trial_id: outcome.score for outcome in recorder.outcomes}
    top = sorted(search_scores, key=search_scores.get, reverse=True)[:2]
    assert sorted(trial for trial, _, _ in again) == sorted(top)
    for trial, score, mean in again:
        assert mean == pytest.approx((search_scores[trial] + score) / 2)
    assert result.best_trial_id == max(again, key=lambda args: args[2])[0]


def test_re_evaluation_below_one_trial_is_refused(make_spec):
    from cnnsearch.search.errors import UserError
    from cnnsearch.search.spec import validate

    with pytest.raises(UserError, match=r"reevaluate.top_k must be >= 1 or null \(off\), got 0"):
        validate(make_spec(reevaluate=ReevaluateConfig(top_k=0)))
