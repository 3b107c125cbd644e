"""keras-tuner HyperModel: hyperparameters -> candidate -> compiled Keras model."""

from __future__ import annotations

import keras
import keras_tuner as kt

from cnnsearch.models.cnn import build_model, compile_model
from cnnsearch.search.config import TrainingConfig
from cnnsearch.search.kt.space import Candidate, SearchSpace, candidate_from_values, skip_reason


class CNNHyperModel(kt.HyperModel):
    """Builds the candidate a set of hyperparameters describes."""

    def __init__(self, space: SearchSpace, input_shape: tuple[int, int, int],
                 num_classes: int, training: TrainingConfig) -> None:
        super().__init__(name="cnn")
        self.space = space
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.training = training

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
