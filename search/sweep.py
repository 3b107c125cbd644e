"""One sweep end to end: data, search, final fit, one evaluation on the test split."""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import asdict

import keras

from cnnsearch.search.budget import Budget
from cnnsearch.search.config import FinalFitConfig, TrainingConfig
from cnnsearch.search.data.datasets import Dataset, load_dataset
from cnnsearch.search.distributed.workers import WorkerPool
from cnnsearch.search.errors import UserError
from cnnsearch.search.events import (
    BEST_MODEL_FILE,
    Observers,
    SweepInfo,
    SweepResult,
    TrialOutcome,
    TrialState,
)
from cnnsearch.search.final_fit import epochs_behind, final_model
from cnnsearch.search.folder import sweep_folder
from cnnsearch.search.kt.hypermodel import CNNHyperModel, training_callbacks
from cnnsearch.search.kt.internals import (
    check_version,
    leave_search,
    repair_after_reload,
    rpc_failure,
    same_space,
)
from cnnsearch.search.kt.space import SearchSpace
from cnnsearch.search.kt.stopping import StopPolicy
from cnnsearch.search.kt.tuners import (
    SweepTuner,
    TrialStatus,
    completed_trials,
    make_tuner,
)
from cnnsearch.search.reevaluate import reevaluated_winner
from cnnsearch.search.spec import SweepSpec, validate

log = logging.getLogger(__name__)


def run_sweep(spec: SweepSpec, observers: list | None = None, data: Dataset | None = None,
              workers: WorkerPool | None = None,
              hypermodel_class: type[CNNHyperModel] = CNNHyperModel,
              budget: Budget | None = None) -> tuple[SweepResult, keras.Model]:
    """Search, re-train the winner, evaluate it once on the test split.

    Args:
        spec: the sweep's configuration.
        observers: receivers of sweep, trial and epoch events (progress, MLflow).
        data: ``spec.data`` already loaded with ``spec.seed`` (loaded here when None).
        workers: this host's worker processes, already started (distributed sweeps).
        hypermodel_class: how hyperparameters become a trained model (a subclass may
            build or fit differently).
        budget: ``spec.budget.seconds`` begun (begun now when None and it is set).

    Returns:
        The result summary and the final model.

    Raises:
        UserError: bad configuration, a changed space on resume, the sweep running in
            another process, no feasible candidate, or a search stopped by consecutive
            failures.
    """
    check_version()
    space = validate(spec)
    events = Observers(observers or [])
    if data is None:
        data = load_dataset(spec.data, spec.seed)
    if budget is None and spec.budget.seconds is not None:
        budget = Budget(spec.budget.seconds, time.monotonic())
    state = {"name": spec.sweep_name, "space_hash": spec.space_hash, "config": spec.config}
    with sweep_folder(spec.directory, state, spec.resume) as continued:
        return _search_and_fit(spec, space, events, data, workers, hypermodel_class,
                               continued, budget)


def _search_and_fit(spec: SweepSpec, space: SearchSpace, events: Observers, data: Dataset,
                    workers: WorkerPool | None, hypermodel_class: type[CNNHyperModel],
                    continued: bool, budget: Budget | None) -> tuple[SweepResult, keras.Model]:
    """``run_sweep`` once the sweep's folder is this process's."""
    directory = spec.directory
    dtype_policy = keras.config.dtype_policy()
    started = time.perf_counter()
    try:
        tuner = _tuner(spec, space, data, events, hypermodel_class, overwrite=not spec.resume,
                       budget=budget)
        if budget is not None:
            events.observers.append(_FinalFitPlan(budget, tuner, spec.final_fit,
                                                  len(data.x_train) + len(data.x_val),
                                                  spec.reevaluate.top_k))
        if continued:
            repair_after_reload(tuner.oracle)
        events.sweep_started(SweepInfo(
            name=spec.sweep_name, directory=str(directory), config=spec.config,
            params=spec.recorded_config,
            dataset={"name": spec.data.name, "digest": data.digest(),
                     "source": spec.data.path or str(spec.data.name),
                     "profile": data.profile()},
            space_hash=spec.space_hash,
            max_trials=spec.tuner.trial_limit,
            resumed=continued, objective=spec.tuner.objective,
            maximize=spec.tuner.objective_direction == "max",
            completed_trials=completed_trials(tuner)))
        result = SweepResult(name=spec.sweep_name, directory=str(directory))
        # Every object alive now (modules, data, observers) outlives the search; frozen,
        # the full collection keras-tuner runs before each trial skips them (~0.2 s).
        gc.freeze()
        try:
            if spec.distributed.enabled:
                _serve(tuner, spec, events, workers, data)
            else:
                _search(tuner, data, spec.training)
        finally:
            gc.unfreeze()
        result.stopped_reason = tuner.policy.stopped_reason
        winner = None
        if spec.reevaluate.top_k:
            winner = reevaluated_winner(tuner, data, spec.training, spec.reevaluate.top_k,
                                        spec.seed, events, budget)
        events.search_ended()
        _count(tuner, result)
        model = final_model(tuner, data, spec.final_fit, spec.training, result, budget, winner)
        result.seconds = time.perf_counter() - started
        model.save(directory / BEST_MODEL_FILE)
        result.model_path = str(directory / BEST_MODEL_FILE)
        (directory / "result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        events.sweep_ended(result, model)
        return result, model
    except BaseException as error:
        events.sweep_failed(error)
        raise
    finally:
        keras.config.set_dtype_policy(dtype_policy)


def _tuner(spec: SweepSpec, space: SearchSpace, data: Dataset, events: Observers,
           hypermodel_class: type[CNNHyperModel], overwrite: bool,
           budget: Budget | None = None) -> SweepTuner:
    """The sweep's tuner in ``spec.directory``, seeded, with its stop policy (its time
    budget starts now, its total budget is ``budget``); mixed precision on where asked
    (the caller restores the policy)."""
    keras.utils.set_random_seed(spec.seed)
    if spec.training.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    hypermodel = hypermodel_class(space, data.input_shape, data.num_classes, spec.training)
    return make_tuner(spec.tuner, hypermodel, events, StopPolicy.from_config(spec.tuner, budget),
                      directory=str(spec.directory), project_name="tuner",
                      overwrite=overwrite, seed=spec.seed)


class _FinalFitPlan:
    """Re-plans a budget's final fit after each trial (a sweep observer): the best
    trial so far, its epochs (or ``final_fit.epochs``) over ``images`` at its speed, and
    the re-evaluation of the ``top_k`` best (their own training times)."""

    def __init__(self, budget: Budget, tuner: SweepTuner, final_fit: FinalFitConfig,
                 images: int, top_k: int | None) -> None:
        self.budget, self.tuner, self.final_fit, self.images = budget, tuner, final_fit, images
        self.top_k = top_k or 0
        self.seconds: dict[str, float] = {}   # trial id -> its training time

    def trial_ended(self, outcome: TrialOutcome) -> None:
        if outcome.status == TrialState.completed and outcome.images_per_second:
            self.budget.speeds[outcome.trial_id] = outcome.images_per_second
            self.seconds[outcome.trial_id] = outcome.train_seconds
        oracle = self.tuner.oracle
        best = oracle.get_best_trials(max(self.top_k, 1))
        if best:
            epochs = (self.final_fit.epochs or epochs_behind(oracle, best[0])
                      if self.final_fit.enabled else 0)
            again = sum(self.seconds.get(t.trial_id, 0.0) for t in best[:self.top_k])
            self.budget.plan(best[0].trial_id, epochs, self.images, again)


def first_candidate(spec: SweepSpec, data: Dataset) -> keras.Model | None:
    """The compiled model of the space's first candidate (each key's first value), or
    None where it cannot be built (infeasible, too large)."""
    import keras_tuner as kt

    hypermodel = CNNHyperModel(validate(spec), data.input_shape, data.num_classes,
                               spec.training)
    try:
        return hypermodel.build(kt.HyperParameters())
    except kt.errors.FailedTrialError:
        return None


def _search(tuner: SweepTuner, data: Dataset, training: TrainingConfig) -> None:
    """Run the search (until its oracle or its stop policy ends it)."""
    objective = tuner.oracle.objective
    callbacks = training_callbacks(objective.name, objective.direction, training)
    tuner.search(x=data.x_train, y=data.y_train, validation_data=(data.x_val, data.y_val),
                 epochs=training.epochs, batch_size=training.batch_size,
                 callbacks=callbacks, verbose=0)


def _serve(tuner: SweepTuner, spec: SweepSpec, events: Observers,
           workers: WorkerPool | None, data: Dataset) -> None:
    """Hand the trials out to workers (``workers`` of this host, already started, and
    those of other hosts) and train a share here."""
    from cnnsearch.search.distributed.chief import Chief

    chief = Chief(tuner.oracle, spec.distributed, tuner.policy, lost=events.trial_lost)

    def train() -> None:
        """The chief's own trials, beside its workers'."""
        try:
            _search(tuner, data, spec.training)
        finally:
            leave_search(tuner.oracle, tuner.tuner_id)

    tuner.save()
    chief.start()
    try:
        chief.serve(workers, train if spec.distributed.chief_trains else None)
    except BaseException:
        if workers is not None:   # stopped before the sweep's runs are closed (see
            workers.stop()        # MlflowRecorder.sweep_failed): they close theirs first
        raise


def run_worker(spec: SweepSpec, observers: list | None = None,
               data: Dataset | None = None) -> None:
    """Train the trials the chief at ``spec.distributed.chief`` hands out, until it has
    none left (``distributed.role=worker``).

    Raises:
        UserError: bad configuration, no chief answering, or a search space that
            differs from the chief's.
    """
    from cnnsearch.search.distributed.chief import connect, follow_parent

    follow_parent()
    check_version()
    space = validate(spec)
    events = Observers(observers or [])
    if data is None:
        data = load_dataset(spec.data, spec.seed)
    connect(spec.distributed.chief, spec.distributed.connect_timeout)
    spec.directory.mkdir(parents=True, exist_ok=True)
    tuner = _tuner(spec, space, data, events, CNNHyperModel, overwrite=False)
    if not same_space(tuner.oracle):
        raise UserError(f"this worker's search space differs from the chief's at "
                        f"{spec.distributed.chief}: start every worker with the chief's "
                        "search_space and data")
    events.worker_started(SweepInfo(
        name=spec.sweep_name, directory=str(spec.directory), config=spec.config,
        space_hash=spec.space_hash, max_trials=None, resumed=False,
        objective=spec.tuner.objective, maximize=spec.tuner.objective_direction == "max"))
    try:
        _search(tuner, data, spec.training)
    except BaseException as error:
        events.sweep_failed(error)
        failure = rpc_failure(error)
        if failure is not None:
            raise UserError(f"lost the chief at distributed.chief={spec.distributed.chief} "
                            f"({failure}); the trials it completed are kept there") from None
        raise


def _count(tuner: SweepTuner, result: SweepResult) -> None:
    trials = tuner.oracle.trials.values()
    result.n_completed = sum(t.status == TrialStatus.COMPLETED for t in trials)
    result.n_failed = sum(t.status == TrialStatus.FAILED for t in trials)
    result.skip_reasons = dict(tuner.oracle.skipped.most_common())
    result.n_skipped = sum(result.skip_reasons.values())


