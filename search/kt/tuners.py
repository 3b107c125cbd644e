"""The trial lifecycle: the configured keras-tuner tuner over our oracles (search/kt/oracles.py).

* The tuner turns a NaN or infinite loss into a failed trial and reports each trial and
  epoch to the sweep's observers. keras-tuner itself clears the Keras session before
  building each trial's model.
* A trial trains as fast as a bare ``model.fit`` (search/kt/hypermodel.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras
import keras_tuner as kt
import psutil

from cnnsearch.search.config import TunerConfig, TunerName
from cnnsearch.search.errors import last_line
from cnnsearch.search.events import Observers, TrialOutcome, TrialState
from cnnsearch.search.kt.hypermodel import CNNHyperModel
from cnnsearch.search.kt.internals import (
    TunerHooks,
    consecutive_failures,
    is_worker_oracle,
    stop_new_trials,
)
from cnnsearch.search.kt.oracles import make_oracle
from cnnsearch.search.kt.stopping import StopPolicy, StopRules
from cnnsearch.search.tf_internals import custom_gradients, forget_custom_gradients

TrialStatus = kt.engine.trial.TrialStatus
HISTORY_FILE = "objective_per_epoch.json"   # in each trial's folder: for median stopping

log = logging.getLogger(__name__)

# -- tuners ----------------------------------------------------------------------


class _EpochReporter(keras.callbacks.Callback):
    """Forwards each epoch's logs to the observers; a NaN or infinite loss stops training.

    Shared, not copied, per trial.
    """

    def __init__(self, observers: Observers, trial_id: str) -> None:
        super().__init__()
        self.observers, self.trial_id = observers, trial_id
        self.epoch_ends: list[float] = []

    def __deepcopy__(self, memo):  # keras-tuner deep-copies callbacks
        return self

    @property
    def epochs(self) -> int:
        return len(self.epoch_ends)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter())
        logs = dict(logs or {})
        if not math.isfinite(logs.get("loss", 0.0)):
            self.model.stop_training = True  # run_trial turns it into a failed trial
        self.observers.epoch_ended(self.trial_id, epoch, logs)


class SweepTuner(TunerHooks, kt.Tuner):
    """``kt.Tuner`` with a NaN or infinite loss as failure, asynchronous batch dispatch,
    observer events, and the sweep's stop policy (search/kt/stopping.py): trials end
    early with the time budget or by its pruner, the search with the budget or failures.
    """

    def __init__(self, oracle, hypermodel: CNNHyperModel, observers: Observers,
                 policy: StopPolicy, **kwargs) -> None:
        self.observers = observers
        self.policy = policy
        self._started: dict[str, float] = {}
        self._reporters: dict[str, _EpochReporter] = {}
        self._stops: dict[str, StopRules] = {}
        self._histories: dict[str, list[tuple[int, float]]] = {}
        self._train_images = 0
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._started[trial.trial_id] = time.perf_counter()
        values = dict(trial.hyperparameters.values)
        candidate = self.hypermodel.candidate_from_values(_search_values(values))
        self.observers.trial_started(trial.trial_id, values, candidate)

    def run_trial(self, trial, *args, **kwargs):
        self._train_images = len(kwargs.get("x", args[0] if args else ()))
        reporter = _EpochReporter(self.observers, trial.trial_id)
        self._reporters[trial.trial_id] = reporter
        stops = self._stop_rules(trial.trial_id)
        self._stops[trial.trial_id] = stops
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), reporter, stops]
        registered = custom_gradients()
        try:
            histories = super().run_trial(trial, *args, **kwargs)
        finally:
            forget_custom_gradients(keep=registered)
        for history in histories if isinstance(histories, list) else [histories]:
            losses = getattr(history, "history", {}).get("loss", [])
            bad = [(i, loss) for i, loss in enumerate(losses) if not math.isfinite(loss)]
            if bad:
                epoch, loss = bad[0]
                raise kt.errors.FailedTrialError(
                    f"loss became {'NaN' if math.isnan(loss) else 'infinite'} at epoch {epoch}")
        return histories

    def _stop_rules(self, trial_id: str) -> StopRules:
        objective = self.oracle.objective

        def others() -> list[list[tuple[int, float]]]:
            return [self._history(other) for other in self._completed_ids()
                    if other != trial_id]

        return StopRules(trial_id, objective.name, objective.direction == "max", self.policy,
                         others)

    def _completed_ids(self) -> list[str]:
        """Completed trials, from their per-epoch files (a worker's oracle cannot list them;
        the workers of one host share the folder)."""
        return [path.parent.name.removeprefix("trial_")
                for path in Path(self.project_dir).glob(f"trial_*/{HISTORY_FILE}")]

    def _history(self, trial_id: str) -> list[tuple[int, float]]:
        """A completed trial's objective per epoch (keras-tuner keeps only its best epoch).

        Kept beside keras-tuner's trial.json, so a resumed sweep still has them.
        """
        if trial_id not in self._histories:
            path = Path(self.get_trial_dir(trial_id)) / HISTORY_FILE
            self._histories[trial_id] = ([tuple(pair) for pair in json.loads(path.read_text())]
                                         if path.is_file() else [])
        return self._histories[trial_id]

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)
        finally:
            if is_worker_oracle(self.oracle):   # the score and metrics live in the chief
                trial = self.oracle.get_trial(trial.trial_id)
            self.observers.trial_ended(self._outcome(trial))
        if is_worker_oracle(self.oracle):   # the chief decides; this worker's trials end at
            return                          # its budget, and it asks the chief for the next
        if self.policy.search_stop(consecutive_failures(self.oracle)):
            stop_new_trials(self.oracle)

    def _outcome(self, trial) -> TrialOutcome:
        seconds = time.perf_counter() - self._started.pop(trial.trial_id, time.perf_counter())
        reporter = self._reporters.pop(trial.trial_id, None)
        stops = self._stops.pop(trial.trial_id, None)
        completed = trial.status == TrialStatus.COMPLETED
        if stops is not None and completed:
            self._histories[trial.trial_id] = stops.history
            path = Path(self.get_trial_dir(trial.trial_id)) / HISTORY_FILE
            path.write_text(json.dumps(stops.history))
        ends = reporter.epoch_ends if reporter else []
        epochs = len(ends)
        # steady state: from the end of the first epoch (tracing, warm-up) to the last
        steady = (self._train_images * (epochs - 1) / (ends[-1] - ends[0]) if epochs > 1
                  else self._train_images * epochs / seconds if seconds else 0.0)
        reason = None if completed else last_line(trial.message or "") or "unknown error"
        return TrialOutcome(
            trial_id=trial.trial_id,
            status=TrialState.completed if completed else TrialState.failed,
            reason=reason,
            stopped_early=stops.reason if stops and completed else None,
            score=trial.score if completed else None,
            best_val_accuracy=best_metric(trial, "val_accuracy") if completed else None,
            epochs_run=epochs,
            train_seconds=seconds,
            images_per_second=steady,
            rss_mb=psutil.Process().memory_info().rss / 2**20,
        )


class SweepHyperband(SweepTuner, kt.tuners.Hyperband):
    """Hyperband's epoch schedule and weight hand-over, with our trial lifecycle."""


def make_tuner(config: TunerConfig, hypermodel: CNNHyperModel, observers: Observers,
               policy: StopPolicy, directory: str, project_name: str, overwrite: bool,
               seed: int) -> SweepTuner:
    """Create the configured tuner over ``hypermodel``'s space.

    Args:
        config: the tuner's schema.
        hypermodel: the CNN hypermodel (its space decides feasibility).
        observers: receivers of trial, epoch and skip events.
        policy: the sweep's stop policy.
        directory: keras-tuner's working directory (under the sweep folder).
        project_name: keras-tuner's project name.
        overwrite: start afresh instead of resuming an existing project.
        seed: random seed of the oracle.
    """
    config.validate()
    oracle = make_oracle(config, seed, hypermodel.skip_reason, observers.candidate_skipped)
    tuner_class = SweepHyperband if config.name == TunerName.hyperband else SweepTuner
    return tuner_class(oracle, hypermodel, observers, policy, directory=directory,
                       project_name=project_name, overwrite=overwrite,
                       executions_per_trial=config.executions_per_trial)


def completed_trials(tuner: SweepTuner) -> dict[str, dict[str, float]]:
    """Trial id -> best objective and validation accuracy of each completed trial."""
    objective = tuner.oracle.objective.name
    return {trial.trial_id: {f"best_{objective}": trial.score,
                             "best_val_accuracy": best_metric(trial, "val_accuracy")}
            for trial in tuner.oracle.trials.values()
            if trial.status == TrialStatus.COMPLETED}


def best_metric(trial, metric: str) -> float | None:
    """Best value of a metric over a trial's epochs (None if never logged)."""
    if not trial.metrics.exists(metric):
        return None
    return float(trial.metrics.get_best_value(metric))


def _search_values(values: dict) -> dict:
    """Drop keras-tuner's own bookkeeping values (``tuner/epochs`` ...)."""
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}

