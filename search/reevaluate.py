"""Top-k re-evaluation: before the final fit, the k best trials train once more, with
another seed, and the winner is the best mean of its two scores.

One validation score is noisy (an initialisation, an order of batches): the best of
many trials is partly the luckiest. keras-tuner's ``executions_per_trial`` repeats every
trial; this repeats only the k that can win. The test split is still touched once,
after. Each re-evaluation trains as the search trained (``training``: epochs, early
stopping, learning-rate drops) on the same train / validation split.
"""

from __future__ import annotations

import logging
import statistics
import time

import keras

from cnnsearch.search.budget import Budget, Deadline
from cnnsearch.search.config import TrainingConfig
from cnnsearch.search.data.datasets import Dataset
from cnnsearch.search.events import Observers
from cnnsearch.search.kt.hypermodel import training_callbacks
from cnnsearch.search.kt.tuners import SweepTuner

log = logging.getLogger(__name__)


def reevaluated_winner(tuner: SweepTuner, data: Dataset, training: TrainingConfig,
                       top_k: int, seed: int, events: Observers,
                       budget: Budget | None = None):
    """Re-train the ``top_k`` best completed trials with seeds ``seed + 1``, ``seed + 2``,
    ...; return the trial with the best mean of its search and re-evaluation scores
    (None when no trial completed).

    With a ``budget``, a re-evaluation stops at an epoch end that would eat into the
    final fit's planned time, and none starts once that time is reached.
    """
    oracle = tuner.oracle
    objective = oracle.objective
    trials, scores = {}, {}
    for offset, trial in enumerate(oracle.get_best_trials(top_k), start=1):
        if budget is not None and budget.reevaluation_deadline <= time.monotonic():
            log.warning("re-evaluation: no time left of budget.seconds=%g for trial %s on",
                        budget.seconds, trial.trial_id)
            break
        keras.utils.set_random_seed(seed + offset)
        hp = trial.hyperparameters.copy()
        model = tuner.hypermodel.build(hp)
        callbacks = training_callbacks(objective.name, objective.direction, training)
        if budget is not None:
            callbacks.append(Deadline(budget.reevaluation_deadline))
        history = tuner.hypermodel.fit(
            hp, model, data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
            epochs=training.epochs, batch_size=training.batch_size, callbacks=callbacks,
            verbose=0)
        values = history.history[objective.name]
        score = max(values) if objective.direction == "max" else min(values)
        trials[trial.trial_id], scores[trial.trial_id] = trial, (trial.score, score)
        mean = statistics.fmean(scores[trial.trial_id])
        log.info("re-evaluation %d/%d: trial %s scored %.4f (search %.4f), mean %.4f", offset,
                 top_k, trial.trial_id, score, trial.score, mean)
        events.trial_reevaluated(trial.trial_id, score, mean)
        keras.backend.clear_session()
    winner = best_by_mean(scores, objective.direction == "max")
    return None if winner is None else trials[winner]


def best_by_mean(scores: dict[str, tuple[float, ...]], maximize: bool) -> str | None:
    """The id whose scores have the best mean (the earliest of equals), or None."""
    if not scores:
        return None
    pick = max if maximize else min
    return pick(scores, key=lambda trial_id: statistics.fmean(scores[trial_id]))
