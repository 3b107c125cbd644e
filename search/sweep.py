"""One sweep end to end: data, search, final fit, one evaluation on the test split."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from cnnsearch.models.cnn import compile_model
from cnnsearch.search.config import (
    DataConfig,
    DistributedConfig,
    FinalFitConfig,
    RandomTunerConfig,
    Schedule,
    TrainingConfig,
    TunerConfig,
)
from cnnsearch.search.data.datasets import Dataset, load_dataset
from cnnsearch.search.distributed.workers import WorkerPool
from cnnsearch.search.errors import UserError
from cnnsearch.search.events import BEST_MODEL_FILE, Observers, SweepInfo, SweepResult
from cnnsearch.search.kt.hypermodel import CNNHyperModel
from cnnsearch.search.kt.internals import (
    check_version,
    hyperband_parent,
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
    best_metric,
    completed_trials,
    make_tuner,
)

log = logging.getLogger(__name__)

STATE_FILE = "sweep.json"
SWEEP_LOCK = ".cnnsearch.lock"   # held by the process running the sweep (flock)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs, as plain values (built by the CLI from the config)."""

    data: DataConfig
    search_space: dict
    tuner: TunerConfig = field(default_factory=RandomTunerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    root: str = "outputs"
    name: str | None = None
    resume: bool = True
    seed: int = 0
    final_fit: FinalFitConfig = field(default_factory=FinalFitConfig)
    config: dict = field(default_factory=dict)   # the composed config, for the records
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def space_hash(self) -> str:
        """Hash of the search space and the data config: what a resume must not change."""
        blob = json.dumps({"space": self.search_space, "data": asdict(self.data)},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def sweep_name(self) -> str:
        return self.name or (f"{self.data.name}-{self.tuner.name}-seed{self.seed}-"
                             f"{self.space_hash[:8]}")

    @property
    def recorded_config(self) -> dict:
        """The config keys this sweep uses: no other command's keys, no distributed keys
        for a one-process sweep (the tuner's schema holds only its own knobs)."""
        unused = {"export", "results", "ui", "server"} | (set() if self.distributed.enabled
                                                else {"distributed"})
        config = {k: v for k, v in self.config.items() if k not in unused}
        return config

    @property
    def directory(self) -> Path:
        return Path(self.root).resolve() / "sweeps" / self.sweep_name


def validate(spec: SweepSpec) -> SearchSpace:
    """Check every user-given value before any data is loaded or model trained.

    Returns:
        The validated search space.

    Raises:
        UserError: naming the first bad key.
    """
    check_version()
    space = SearchSpace.from_config(spec.search_space)
    check_sweep_name(spec.name)
    for group in (spec.data, spec.tuner, spec.training, spec.final_fit, spec.distributed):
        group.validate()
    if spec.tuner.name == "grid":
        for dim in space.dims.values():
            if dim.is_range and dim.step is None and not isinstance(dim.min, int):
                raise UserError(f"tuner=grid needs a finite space: give search_space."
                                f"{dim.name} a step or a list")
    return space


def check_sweep_name(name: str | None) -> None:
    """A sweep name is one plain folder name, so its folder stays under ``paths.root``.

    Raises:
        UserError: for a path (``/tmp/x``, ``../x``, ``a/b``) or an odd character.
    """
    if name is not None and not NAME_PATTERN.fullmatch(str(name)):
        raise UserError(f"sweep.name must be a plain folder name (letters, digits, '.', '_', "
                        f"'-'; at most 128, not starting with '.'), got {name!r}")


def run_sweep(spec: SweepSpec, observers: list | None = None, data: Dataset | None = None,
              workers: WorkerPool | None = None,
              hypermodel_class: type[CNNHyperModel] = CNNHyperModel,
              ) -> tuple[SweepResult, keras.Model]:
    """Search, re-train the winner, evaluate it once on the test split.

    Args:
        spec: the sweep's configuration.
        observers: receivers of sweep, trial and epoch events (progress, MLflow).
        data: ``spec.data`` already loaded with ``spec.seed`` (loaded here when None).
        workers: this host's worker processes, already started (distributed sweeps).
        hypermodel_class: how hyperparameters become a trained model (a subclass may
            build or fit differently).

    Returns:
        The result summary and the final model.

    Raises:
        UserError: bad configuration, a changed space on resume, the sweep running in
            another process, no feasible candidate, or a search stopped by consecutive
            failures.
    """
    space = validate(spec)
    events = Observers(observers or [])
    if data is None:
        data = load_dataset(spec.data, spec.seed)
    with _sweep_folder(spec) as (directory, continued):
        return _search_and_fit(spec, space, events, data, workers, hypermodel_class,
                               directory, continued)


def _search_and_fit(spec: SweepSpec, space: SearchSpace, events: Observers, data: Dataset,
                    workers: WorkerPool | None, hypermodel_class: type[CNNHyperModel],
                    directory: Path, continued: bool) -> tuple[SweepResult, keras.Model]:
    """``run_sweep`` once the sweep's folder is this process's."""
    keras.utils.set_random_seed(spec.seed)
    dtype_policy = keras.config.dtype_policy()
    if spec.training.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    started = time.perf_counter()
    try:
        hypermodel = hypermodel_class(space, data.input_shape, data.num_classes, spec.training)
        policy = StopPolicy.from_config(spec.tuner)
        tuner = make_tuner(spec.tuner, hypermodel, events, policy, directory=str(directory),
                           project_name="tuner", overwrite=not spec.resume, seed=spec.seed)
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
        result.stopped_reason = policy.stopped_reason
        events.search_ended()
        _count(tuner, result)
        model = _final_model(tuner, data, spec, result)
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


@contextmanager
def _sweep_folder(spec: SweepSpec) -> Iterator[tuple[Path, bool]]:
    """Create (or check, on resume) the sweep's folder and hold it for this process until
    the sweep ends; yields the folder and whether it continues an earlier start.

    The state file, written first, marks a folder as cnnsearch's: a fresh start
    (``sweep.resume=false``) empties only such a folder, and a non-empty folder
    without it is refused, never touched. The lock (``SWEEP_LOCK``, flock) stops a second
    start of a running sweep (another terminal, a requeued job) in one line, before it
    touches the sweep's files or runs; the system drops it with the process, so a
    killed sweep resumes.
    """
    directory = spec.directory
    if _read_state(directory) is None and directory.exists() \
            and any(p.name != SWEEP_LOCK for p in directory.iterdir()):
        raise UserError(f"{directory} exists and is not a cnnsearch sweep folder; nothing was "
                        "changed there: choose another sweep.name or paths.root")
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / SWEEP_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"sweep {directory.name!r} is running in another process "
                            f"({lock.read().strip() or 'unknown'}); wait for it to end, or "
                            "give this one another sweep.name") from None
        except OSError as error:   # a file system without flock (Lustre mounted without it)
            log.warning("cannot lock %s (%s): nothing stops a second start of this sweep "
                        "while it runs", directory, error)
        else:
            lock.truncate(0)
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
            lock.flush()
        yield directory, _start(spec, directory)


def _start(spec: SweepSpec, directory: Path) -> bool:
    """Continue the sweep in ``directory`` or start it afresh (emptied but for the lock
    and the state file, rewritten next); returns whether it continues."""
    state = _read_state(directory)
    continued = state is not None and spec.resume
    if continued:
        if state.get("space_hash") != spec.space_hash:
            raise UserError(
                f"sweep {spec.sweep_name!r} in {directory} was started with a different "
                "search space or data set; use sweep.resume=false to start it afresh or "
                "sweep.name=<new name> for a new sweep")
    elif state is not None:   # the state file, kept to the last, still marks it ours
        if directory.is_symlink():   # its entries lie outside paths.root
            raise UserError(f"{directory} is a link to {directory.readlink()}; "
                            "sweep.resume=false empties only a folder under paths.root, "
                            "nothing was deleted: remove the link or choose another sweep.name")
        for path in directory.iterdir():
            if path.name in (SWEEP_LOCK, STATE_FILE):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (directory / STATE_FILE).write_text(json.dumps(
        {"name": spec.sweep_name, "space_hash": spec.space_hash, "config": spec.config},
        indent=2, default=str))
    return continued


def _read_state(directory: Path) -> dict | None:
    """The folder's state file if cnnsearch wrote it (it names the folder), else None."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("name") == directory.name else None


def _search(tuner: SweepTuner, data: Dataset, training: TrainingConfig) -> None:
    """Run the search (until its oracle or its stop policy ends it)."""
    callbacks = []
    objective = tuner.oracle.objective
    if training.reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=objective.name, mode=objective.direction,
            factor=training.reduce_lr_factor, patience=training.reduce_lr_patience))
    if training.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=objective.name, mode=objective.direction,
            patience=training.early_stopping_patience))
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
    space = validate(spec)
    events = Observers(observers or [])
    if data is None:
        data = load_dataset(spec.data, spec.seed)
    connect(spec.distributed.chief, spec.distributed.connect_timeout)
    spec.directory.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(spec.seed)
    if spec.training.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    hypermodel = CNNHyperModel(space, data.input_shape, data.num_classes, spec.training)
    tuner = make_tuner(spec.tuner, hypermodel, events, StopPolicy.from_config(spec.tuner),
                       directory=str(spec.directory), project_name="tuner", overwrite=False,
                       seed=spec.seed)
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


def _final_model(tuner: SweepTuner, data: Dataset, spec: SweepSpec,
                 result: SweepResult) -> keras.Model:
    """Re-train the best candidate on train + validation, then evaluate it on test."""
    if result.n_completed == 0:
        if result.stopped_reason:
            raise UserError(f"the search stopped: {result.stopped_reason}")
        example = next(iter(result.skip_reasons), "no candidate could be drawn")
        raise UserError(f"search_space has no feasible candidate for input "
                        f"{'x'.join(map(str, data.input_shape))} (e.g. {example})")
    best = tuner.oracle.get_best_trials(1)[0]
    hp = best.hyperparameters
    candidate = tuner.hypermodel.candidate(hp.copy())
    result.best_trial_id = best.trial_id
    result.best_values = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
    result.architecture = candidate.architecture.summary()
    result.params = candidate.architecture.params
    result.flops = candidate.architecture.flops
    result.best_val_accuracy = best_metric(best, "val_accuracy")
    _warn_if_chance_level(result.best_val_accuracy, data.y_val)
    if spec.final_fit.enabled:
        epochs = spec.final_fit.epochs or epochs_behind(tuner.oracle, best)
        log.info("final fit: trial %s on train + validation for %d epochs, %s learning rate",
                 best.trial_id, epochs, spec.final_fit.schedule)
        x = np.concatenate([data.x_train, data.x_val])
        model = tuner.hypermodel.build(hp)
        if spec.final_fit.schedule == Schedule.cosine:
            steps = epochs * math.ceil(len(x) / spec.training.batch_size)
            compile_model(model, candidate.optimizer,
                          keras.optimizers.schedules.CosineDecay(candidate.learning_rate, steps),
                          jit_compile=spec.training.jit_compile)
        model.fit(x, np.concatenate([data.y_train, data.y_val]),
                  epochs=epochs, batch_size=spec.training.batch_size, verbose=0)
    else:
        model = tuner.get_best_models(1)[0]
    result.test_loss, result.test_accuracy = (float(v) for v in model.evaluate(
        data.x_test, data.y_test, batch_size=spec.training.batch_size, verbose=0))
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
