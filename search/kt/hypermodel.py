"""keras-tuner HyperModel: hyperparameters -> candidate -> compiled Keras model -> fit.

A trial trains as fast as a bare ``model.fit`` (keras-tuner's public ``HyperModel.fit``
hook): no callback has per-batch hooks (Keras keeps its asynchronous batch dispatch
where the backend has it) and the best epoch's weights are kept in memory and written
once, at the end of training.
"""

from __future__ import annotations

import keras
import keras_tuner as kt

from cnnsearch.models.cnn import build_model, compile_model
from cnnsearch.search.config import TrainingConfig
from cnnsearch.search.kt.internals import (
    BestEpochInMemory,
    is_best_epoch_checkpoint,
    is_tuner_callback,
)
from cnnsearch.search.kt.space import Candidate, SearchSpace, candidate_from_values, skip_reason


def training_callbacks(metric: str, direction: str,
                       training: TrainingConfig) -> list[keras.callbacks.Callback]:
    """How every candidate trains beyond ``fit`` itself: the learning-rate drops and the
    early stopping of ``training``, watching ``metric`` (``direction``: min or max)."""
    callbacks: list[keras.callbacks.Callback] = []
    if training.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=metric, mode=direction, factor=training.reduce_lr_factor,
            patience=training.reduce_lr_patience))
    if training.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=metric, mode=direction, patience=training.early_stopping_patience))
    return callbacks


class CNNHyperModel(kt.HyperModel):
    """Builds the candidate a set of hyperparameters describes."""

    def __init__(self, space: SearchSpace, input_shape: tuple[int, int, int],
                 num_classes: int, training: TrainingConfig) -> None:
        super().__init__(name="cnn")
        self.space = space
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.training = training
        self._in_memory: dict = {}   # the running trial's checkpoint -> ours

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        """Declare the whole space (every block, every condition) in one pass."""
        self.space.declare(hp)

    def candidate(self, hp: kt.HyperParameters) -> Candidate:
        """The candidate that ``hp``'s current values describe."""
        return self.candidate_from_values(self.space.declare(hp))

    def candidate_from_values(self, values: dict) -> Candidate:
        """The candidate for a dict of active hyperparameter values."""
        return candidate_from_values(values, self.input_shape, self.num_classes)

    def skip_reason(self, values: dict) -> str | None:
        """Why the candidate for ``values`` must not be trained, or None."""
        return skip_reason(self.candidate_from_values(values), self.space.max_params)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """Build and compile the candidate.

        Raises:
            keras_tuner.errors.FailedTrialError: if the candidate is infeasible (the
                oracle filters these out first; this is the last line of defence).
        """
        candidate = self.candidate(hp)
        reason = skip_reason(candidate, self.space.max_params)
        if reason:
            raise kt.errors.FailedTrialError(f"infeasible candidate: {reason}")
        model = build_model(candidate.architecture)
        return compile_model(model, candidate.optimizer, candidate.learning_rate,
                             jit_compile=self.training.jit_compile)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, callbacks=(), **kwargs):
        """``model.fit`` with keras-tuner's own callbacks made as cheap as a bare fit's."""
        return model.fit(*args, callbacks=[self._cheap(c) for c in callbacks], **kwargs)

    def _cheap(self, callback):
        """No weights written at every improving epoch, no forced wait per batch."""
        if is_best_epoch_checkpoint(callback):   # one per trial, shared by its executions
            if callback not in self._in_memory:
                self._in_memory = {callback: BestEpochInMemory(callback.objective,
                                                               callback.filepath)}
            return self._in_memory[callback]
        if is_tuner_callback(callback):
            # its batch hooks call Tuner.on_batch_*, which do nothing here
            callback.async_safe = True
        return callback
