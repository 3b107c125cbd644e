"""The configured keras-tuner tuner, with a feasibility filter and our trial lifecycle.

* Oracles draw candidates as usual, but an infeasible or over-budget candidate is
  counted and replaced by another draw: it never becomes a trial, so it neither
  uses up ``max_trials`` nor counts as a failure.
* The tuner turns a NaN loss into a failed trial and reports each trial and epoch
  to the sweep's observers. keras-tuner itself clears the Keras session before
  building each trial's model.
* A trial trains as fast as a bare ``model.fit``: no callback has per-batch hooks
  (Keras keeps its asynchronous batch dispatch where the backend has it) and the
  best epoch's weights are kept in memory and written once, at the end of training.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import keras_tuner as kt
import psutil
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch, TunerCallback  # no public alias

from cnnsearch.search.errors import UserError
from cnnsearch.search.events import Observers, TrialOutcome
from cnnsearch.search.hypermodel import CNNHyperModel

TrialStatus = kt.engine.trial.TrialStatus

log = logging.getLogger(__name__)

TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = {"val_accuracy": "max", "accuracy": "max", "val_loss": "min", "loss": "min"}
MAX_DRAWS = 1000  # draws per trial before the space is deemed exhausted


@dataclass(frozen=True)
class TunerSpec:
    """Which tuner and its knobs (plain values taken from the ``tuner`` config)."""

    name: str = "random"
    objective: str = "val_accuracy"
    direction: str | None = None
    max_trials: int = 10
    max_seconds: float | None = None
    executions_per_trial: int = 1
    max_retries_per_trial: int = 0
    max_consecutive_failed_trials: int = 3
    max_epochs: int = 10
    factor: int = 3
    hyperband_iterations: int = 1
    num_initial_points: int | None = None
    alpha: float = 1e-4
    beta: float = 2.6

    def validate(self) -> None:
        """Raises UserError on an unknown tuner, objective or a non-positive budget."""
        if self.name not in TUNERS:
            raise UserError(f"tuner.name {self.name!r} is unknown; choose from {', '.join(TUNERS)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"tuner.objective {self.objective!r} is not a logged metric; "
                            f"choose from {', '.join(OBJECTIVES)}")
        if self.direction not in (None, "min", "max"):
            raise UserError(f"tuner.direction must be min, max or null, got {self.direction!r}")
        for key in ("max_trials", "executions_per_trial", "max_consecutive_failed_trials",
                    "max_epochs", "factor", "hyperband_iterations"):
            if getattr(self, key) < 1:
                raise UserError(f"tuner.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_retries_per_trial < 0:
            raise UserError("tuner.max_retries_per_trial must be >= 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UserError(f"tuner.max_seconds must be > 0 or null, got {self.max_seconds}")

    @property
    def kt_objective(self) -> kt.Objective:
        return kt.Objective(self.objective, self.direction or OBJECTIVES[self.objective])


# -- oracles ---------------------------------------------------------------------


class _FeasibleDraws:
    """Oracle mixin: infeasible draws are counted, remembered and drawn again."""

    skip_check: Callable[[dict], str | None]
    on_skip: Callable[[str, dict], None]

    def _init_skips(self, skip_check, on_skip) -> None:
        self.skip_check, self.on_skip = skip_check, on_skip
        self.skipped: Counter[str] = Counter()

    def _accept(self, values: dict) -> bool:
        reason = self.skip_check(values)
        if reason is None:
            return True
        self.skipped[reason] += 1
        self._tried_so_far.add(self._compute_values_hash(values))
        self.on_skip(reason, values)
        return False

    def _random_values(self):  # keras-tuner's hook for every random draw
        for _ in range(MAX_DRAWS):
            values = super()._random_values()
            if values is None or self._accept(values):
                return values
        return None

    def get_state(self):
        return {**super().get_state(), "skipped": dict(self.skipped)}

    def set_state(self, state):
        super().set_state(state)
        self.skipped = Counter(state.get("skipped", {}))


class RandomOracle(_FeasibleDraws, kt.oracles.RandomSearchOracle):
    """Random search over feasible candidates."""


class HyperbandOracle(_FeasibleDraws, kt.oracles.HyperbandOracle):
    """Hyperband; new brackets start from feasible random candidates."""


class BayesianOracle(_FeasibleDraws, kt.oracles.BayesianOptimizationOracle):
    """Gaussian-process search; an infeasible proposal is replaced by a feasible random one."""

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        if response["status"] != TrialStatus.RUNNING or self._accept(response["values"]):
            return response
        values = self._random_values()
        if values is None:
            return {"status": TrialStatus.STOPPED, "values": None}
        return {"status": TrialStatus.RUNNING, "values": values}


class GridOracle(_FeasibleDraws, kt.Oracle):
    """Every combination of the space in a fixed order, infeasible ones skipped."""

    def populate_space(self, trial_id):
        for values in _grid(self.get_space()):
            if not self._duplicate(values) and self._accept(values):
                return {"status": TrialStatus.RUNNING, "values": values}
        return {"status": TrialStatus.STOPPED, "values": None}


def _grid(space: kt.HyperParameters) -> Iterator[dict]:
    """All distinct active-value combinations, conditions respected (depth first)."""

    def walk(index: int, hps: kt.HyperParameters) -> Iterator[dict]:
        if index == len(space.space):
            yield dict(hps.values)
            return
        hp = space.space[index]
        hps.merge([hp])
        if not hps.is_active(hp):
            yield from walk(index + 1, hps)
            return
        for value in hp.values:
            hps.values[hp.name] = value
            yield from walk(index + 1, hps)
        del hps.values[hp.name]

    seen = set()
    for values in walk(0, kt.HyperParameters()):
        key = tuple(sorted(values.items()))
        if key not in seen:
            seen.add(key)
            yield values


# -- tuners ----------------------------------------------------------------------


class _EpochReporter(keras.callbacks.Callback):
    """Forwards each epoch's logs to the observers and stops training on a NaN loss.

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


class _BestEpochInMemory(SaveBestEpoch):
    """keras-tuner's best-epoch checkpoint, written once when training ends.

    keras-tuner writes the weights file at every improving epoch (~40 ms, a fifth
    of an epoch of a small model on digits); this keeps a copy in memory instead.
    """

    best_weights: list | None = None

    def _save_model(self):
        self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is None:  # this execution did not beat an earlier one
            return
        last = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        super()._save_model()
        self.model.set_weights(last)
        self.best_weights = None


class SweepTuner(kt.Tuner):
    """``kt.Tuner`` with NaN-as-failure, asynchronous batch dispatch and observer events."""

    def __init__(self, oracle, hypermodel: CNNHyperModel, observers: Observers,
                 max_seconds: float | None = None, **kwargs) -> None:
        self.observers = observers
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.out_of_time = False
        self._started: dict[str, float] = {}
        self._reporters: dict[str, _EpochReporter] = {}
        self._checkpoints: dict[str, _BestEpochInMemory] = {}
        self._train_images = 0
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def _activate_all_conditions(self):
        # declare_hyperparameters already registered every conditional
        # hyperparameter; keras-tuner would otherwise build a model per condition.
        pass

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
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), reporter]
        registered = _custom_gradients()
        try:
            histories = super().run_trial(trial, *args, **kwargs)
        finally:
            _forget_custom_gradients(keep=registered)
        for history in histories if isinstance(histories, list) else [histories]:
            losses = getattr(history, "history", {}).get("loss", [])
            bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
            if bad:
                raise kt.errors.FailedTrialError(f"loss became NaN at epoch {bad[0]}")
        return histories

    def _build_and_fit_model(self, trial, *args, **kwargs):
        kwargs["callbacks"] = [self._lean(callback, trial.trial_id)
                               for callback in kwargs.get("callbacks", [])]
        return super()._build_and_fit_model(trial, *args, **kwargs)

    def _lean(self, callback, trial_id: str):
        """keras-tuner's own callbacks, made as cheap as a bare fit's.

        No weights written at every improving epoch, no forced wait per batch.
        """
        if type(callback) is SaveBestEpoch:  # one per trial, shared by its executions
            if trial_id not in self._checkpoints:
                self._checkpoints[trial_id] = _BestEpochInMemory(callback.objective,
                                                                 callback.filepath)
            return self._checkpoints[trial_id]
        if isinstance(callback, TunerCallback):
            # its batch hooks call Tuner.on_batch_*, which do nothing here
            callback.async_safe = True
        return callback

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)
        finally:
            self.observers.trial_ended(self._outcome(trial))
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.out_of_time = True
            self.oracle.max_trials = len(self.oracle.trials)  # no new trial starts

    def _outcome(self, trial) -> TrialOutcome:
        seconds = time.perf_counter() - self._started.pop(trial.trial_id, time.perf_counter())
        reporter = self._reporters.pop(trial.trial_id, None)
        self._checkpoints.pop(trial.trial_id, None)
        ends = reporter.epoch_ends if reporter else []
        epochs = len(ends)
        # steady state: from the end of the first epoch (tracing, warm-up) to the last
        steady = (self._train_images * (epochs - 1) / (ends[-1] - ends[0]) if epochs > 1
                  else self._train_images * epochs / seconds if seconds else 0.0)
        completed = trial.status == TrialStatus.COMPLETED
        reason = None if completed else _last_line(trial.message)
        return TrialOutcome(
            trial_id=trial.trial_id,
            status="completed" if completed else "failed",
            reason=reason,
            score=trial.score if completed else None,
            best_val_accuracy=best_metric(trial, "val_accuracy") if completed else None,
            epochs_run=epochs,
            train_seconds=seconds,
            images_per_second=steady,
            rss_mb=psutil.Process().memory_info().rss / 2**20,
        )


class SweepHyperband(SweepTuner, kt.tuners.Hyperband):
    """Hyperband's epoch schedule and weight hand-over, with our trial lifecycle."""


def make_tuner(spec: TunerSpec, hypermodel: CNNHyperModel, observers: Observers,
               directory: str, project_name: str, overwrite: bool, seed: int) -> SweepTuner:
    """Create the configured tuner over ``hypermodel``'s space.

    Args:
        spec: tuner name and knobs.
        hypermodel: the CNN hypermodel (its space decides feasibility).
        observers: receivers of trial, epoch and skip events.
        directory: keras-tuner's working directory (under the sweep folder).
        project_name: keras-tuner's project name.
        overwrite: start afresh instead of resuming an existing project.
        seed: random seed of the oracle.
    """
    spec.validate()
    common = dict(objective=spec.kt_objective, seed=seed,
                  max_retries_per_trial=spec.max_retries_per_trial,
                  max_consecutive_failed_trials=spec.max_consecutive_failed_trials)
    if spec.name == "hyperband":
        oracle = HyperbandOracle(max_epochs=spec.max_epochs, factor=spec.factor,
                                 hyperband_iterations=spec.hyperband_iterations, **common)
    elif spec.name == "bayesian":
        oracle = BayesianOracle(max_trials=spec.max_trials,
                                num_initial_points=spec.num_initial_points,
                                alpha=spec.alpha, beta=spec.beta, **common)
    elif spec.name == "grid":
        oracle = GridOracle(max_trials=spec.max_trials, **common)
    else:
        oracle = RandomOracle(max_trials=spec.max_trials, **common)
    oracle._init_skips(hypermodel.skip_reason, observers.candidate_skipped)
    tuner_class = SweepHyperband if spec.name == "hyperband" else SweepTuner
    return tuner_class(oracle, hypermodel, observers, max_seconds=spec.max_seconds,
                       directory=directory,
                       project_name=project_name, overwrite=overwrite,
                       executions_per_trial=spec.executions_per_trial)


def _custom_gradients() -> set[str]:
    """Names in TensorFlow's gradient registry made by ``tf.custom_gradient``."""
    registry = _gradient_registry()
    return {name for name in registry if name.startswith("CustomGradient-")}


def _forget_custom_gradients(keep: set[str]) -> None:
    """Unregister the custom gradients a finished trial's training traced.

    Keras 3's TensorFlow optimizer registers a ``tf.custom_gradient`` (an all-reduce)
    in TensorFlow's global registry at every trace of a train step, and nothing ever
    unregisters it: each trial's whole train graph stays reachable, ~10 MB a trial
    (tensorflow/tensorflow#80895, keras-team/keras#20245). The trial's model is
    gone after the trial, so its entries are dead weight.
    """
    registry = _gradient_registry()
    for name in _custom_gradients() - keep:
        del registry[name]


def _gradient_registry() -> dict:
    # Only where TensorFlow is already loaded (its backend): search/ never imports it.
    ops = sys.modules.get("tensorflow.python.framework.ops")
    return getattr(getattr(ops, "_gradient_registry", None), "_registry", {})


def best_metric(trial, metric: str) -> float | None:
    """Best value of a metric over a trial's epochs (None if never logged)."""
    if not trial.metrics.exists(metric):
        return None
    return float(trial.metrics.get_best_value(metric))


def _search_values(values: dict) -> dict:
    """Drop keras-tuner's own bookkeeping values (``tuner/epochs`` ...)."""
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def _last_line(message: str | None) -> str:
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
