"""After the search: the winner re-trained on train + validation, then tested once."""

from __future__ import annotations

import logging
import math

import keras
import numpy as np

from cnnsearch.models.cnn import compile_model, inference_model
from cnnsearch.search.budget import Budget, Deadline
from cnnsearch.search.config import FinalFitConfig, Schedule, TrainingConfig
from cnnsearch.search.data.datasets import Dataset
from cnnsearch.search.errors import UserError
from cnnsearch.search.events import SweepResult
from cnnsearch.search.kt.internals import hyperband_parent
from cnnsearch.search.kt.tuners import SweepTuner, best_metric

log = logging.getLogger(__name__)


def final_model(tuner: SweepTuner, data: Dataset, final_fit: FinalFitConfig,
                training: TrainingConfig, result: SweepResult,
                budget: Budget | None = None, winner=None) -> keras.Model:
    """Re-train the best candidate on train + validation, then evaluate it on test.

    With a ``budget``, the final fit trains the epochs its time left holds, and stops at
    an epoch end that would overrun it. ``winner``: the trial re-evaluation picked
    (default: the search's best). The model returned (saved, logged, exported)
    has no augmentation layers.
    """
    if result.n_completed == 0:
        if result.stopped_reason:
            raise UserError(f"the search stopped: {result.stopped_reason}")
        example = next(iter(result.skip_reasons), "no candidate could be drawn")
        raise UserError(f"search_space has no feasible candidate for input "
                        f"{'x'.join(map(str, data.input_shape))} (e.g. {example})")
    best = winner or tuner.oracle.get_best_trials(1)[0]
    hp = best.hyperparameters
    candidate = tuner.hypermodel.candidate(hp.copy())
    result.best_trial_id = best.trial_id
    result.best_values = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
    result.architecture = candidate.architecture.summary()
    result.params = candidate.architecture.params
    result.flops = candidate.architecture.flops
    result.best_val_accuracy = best_metric(best, "val_accuracy")
    _warn_if_chance_level(result.best_val_accuracy, data.y_val)
    if final_fit.enabled:
        epochs = final_fit.epochs or epochs_behind(tuner.oracle, best)
        x = np.concatenate([data.x_train, data.x_val])
        deadline = None
        if budget is not None:
            planned, epochs = epochs, budget.final_fit_epochs(best.trial_id, epochs, len(x))
            if epochs < planned:
                log.warning("final fit: %d of the %d planned epochs fit in the %.0f s left of "
                            "budget.seconds=%g", epochs, planned, budget.left, budget.seconds)
            deadline = Deadline(budget.deadline - budget.reserve)
        log.info("final fit: trial %s on train + validation for %d epochs, %s learning rate",
                 best.trial_id, epochs, final_fit.schedule)
        model = tuner.hypermodel.build(hp)
        if final_fit.schedule == Schedule.cosine:
            steps = epochs * math.ceil(len(x) / training.batch_size)
            compile_model(model, candidate.optimizer,
                          keras.optimizers.schedules.CosineDecay(candidate.learning_rate, steps),
                          jit_compile=training.jit_compile)
        model.fit(x, np.concatenate([data.y_train, data.y_val]),
                  epochs=epochs, batch_size=training.batch_size,
                  callbacks=[deadline] if deadline else [], verbose=0)
        stopped = deadline.stopped_at if deadline else None
        result.final_fit_epochs = epochs if stopped is None else stopped + 1
    else:
        model = tuner.get_best_models(1)[0]
    if (plain := inference_model(model, candidate.architecture)) is not model:
        model = compile_model(plain, candidate.optimizer, candidate.learning_rate,
                              jit_compile=training.jit_compile)
    result.test_loss, result.test_accuracy = (float(v) for v in model.evaluate(
        data.x_test, data.y_test, batch_size=training.batch_size, verbose=0))
    return model


def epochs_behind(oracle, trial) -> int:
    """The epochs that trained ``trial``'s best weights: its best epoch and, for a
    Hyperband trial that went on from another's best weights, the epochs behind those
    (keras-tuner counts a trial's best step from its own first epoch)."""
    parent = hyperband_parent(trial)
    before = epochs_behind(oracle, oracle.get_trial(parent)) if parent else 0
    return before + int(trial.best_step) + 1


def _warn_if_chance_level(val_accuracy: float | None, y_val: np.ndarray) -> None:
    """Warn when the best trial does no better than always answering the commonest class
    (within three standard errors): labels no model can learn from their inputs."""
    if val_accuracy is None or not math.isfinite(val_accuracy) or not len(y_val):
        return
    commonest = np.bincount(y_val).max() / len(y_val)
    noise = 3 * math.sqrt(commonest * (1 - commonest) / len(y_val))
    if val_accuracy < commonest + noise:
        log.warning("the best trial's validation accuracy (%.3f) is no better than always "
                    "answering the commonest class (%.3f of %d images): do the labels belong "
                    "to the inputs?", val_accuracy, commonest, len(y_val))
