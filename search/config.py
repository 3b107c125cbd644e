"""The typed configuration of a sweep: one dataclass per config group of conf/ it uses
(the whole tree, with the other commands' groups, is :mod:`cnnsearch.search.app.config`).

These classes are the single source of the config's shape: Hydra checks every
composed config against them (a misspelled key, a wrong type or a value outside a
closed choice fails while composing), and the CLI turns the composed config into
them with ``OmegaConf.to_object``, so the library takes the same objects. What a
type cannot say (ranges, cross-key rules) is each class's ``validate``. The YAML
files in conf/ hold the values. The search space is a free mapping here (a key may
be a list or a range) and is checked by :mod:`cnnsearch.search.kt.space`.

No Keras here: composing the config (and its errors) stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from cnnsearch.search.errors import UserError
from cnnsearch.search.events import Direction, Objective

# The search_space keys (conf/search_space/*.yaml); per-block ones are drawn per block.
BLOCK_KEYS = ("convs_per_block", "filters", "kernel_size", "strides", "padding",
              "activation", "batch_norm", "pooling", "pool_size")
SPACE_KEYS = ("num_blocks", *BLOCK_KEYS, "global_pooling", "dense_units", "dropout",
              "learning_rate", "optimizer")
# search_space.augmentation's keys (training-only image changes; models/cnn.py).
AUGMENTATION_KEYS = ("flip", "translate", "zoom", "contrast")


class DataName(StrEnum):
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    npz = "npz"
    image_folder = "image_folder"


class ColorMode(StrEnum):
    grayscale = "grayscale"
    rgb = "rgb"


class TunerName(StrEnum):
    random = "random"
    bayesian = "bayesian"
    hyperband = "hyperband"
    grid = "grid"


class Schedule(StrEnum):
    cosine = "cosine"       # from the candidate's learning rate down to 0, step by step
    constant = "constant"


class Role(StrEnum):
    chief = "chief"     # hands out trials to workers (here and on other hosts)
    worker = "worker"   # trains the trials a chief hands out


class Pruning(StrEnum):
    median = "median"   # stop a trial worse than the median of earlier trials at its epoch
    none = "none"


@dataclass
class AugmentationDefaults:
    """A data set's default ``search_space.augmentation``: each key a list or a range, as
    in the search space (conf/data/<name>.yaml sets what suits its images)."""

    flip: Any = field(default_factory=lambda: ["none"])     # none | horizontal
    translate: Any = field(default_factory=lambda: [0.0])   # fraction of the side
    zoom: Any = field(default_factory=lambda: [0.0])
    contrast: Any = field(default_factory=lambda: [0.0])


@dataclass
class DataConfig:
    """Which data to load and how to split it."""

    name: DataName = MISSING
    path: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: list[int] | None = None
    color_mode: ColorMode = ColorMode.grayscale
    limit: int | None = None
    augmentation: AugmentationDefaults = field(default_factory=AugmentationDefaults)

    def validate(self) -> None:
        """Raises UserError naming the first value that cannot work."""
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0 < value < 1:
                raise UserError(f"data.{key} must be between 0 and 1 (exclusive), got {value}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"data.limit must be a positive number of examples, got {self.limit}")
        size = self.image_size
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise UserError(f"data.image_size must be two positive ints [height, width], "
                            f"got {size}")


@dataclass
class TunerConfig:
    """What every tuner shares: the objective, the time budget and failures. Each tuner's
    own schema below adds its knobs (conf/tuner/<name>.yaml picks one), so a key another
    tuner takes is an error while composing, not silently ignored."""

    name: TunerName = MISSING
    objective: Objective = Objective.val_accuracy
    direction: Direction | None = None   # null: max for accuracy, min for loss
    max_seconds: float | None = None   # time budget: the running trial ends, no new one starts
    executions_per_trial: int = 1
    max_retries_per_trial: int = 0
    max_consecutive_failed_trials: int = 3

    @property
    def objective_direction(self) -> Direction:
        return self.direction or Objective(self.objective).default_direction

    @property
    def trial_limit(self) -> int | None:
        """The most trials this tuner runs (None: its schedule decides, as Hyperband's)."""
        return None

    def oracle_options(self) -> dict[str, Any]:
        """This tuner's own knobs, as its keras-tuner oracle takes them."""
        return {}

    def validate(self) -> None:
        """Raises UserError on a non-positive count or budget."""
        for key in ("executions_per_trial", "max_consecutive_failed_trials"):
            _at_least(f"tuner.{key}", getattr(self, key), 1)
        if self.max_retries_per_trial < 0:
            raise UserError("tuner.max_retries_per_trial must be >= 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise UserError(f"tuner.max_seconds must be > 0 or null, got {self.max_seconds}")


@dataclass
class TrialsTunerConfig(TunerConfig):
    """A tuner that runs up to ``max_trials`` trials, each stopped early when hopeless."""

    max_trials: int = 10
    # median stopping of hopeless trials (search/kt/stopping.py)
    pruning: Pruning = Pruning.median
    pruning_warmup_epochs: int = 4
    pruning_min_trials: int = 3

    @property
    def trial_limit(self) -> int:
        return self.max_trials

    def oracle_options(self) -> dict[str, Any]:
        return {"max_trials": self.max_trials}

    def validate(self) -> None:
        super().validate()
        for key in ("max_trials", "pruning_warmup_epochs", "pruning_min_trials"):
            _at_least(f"tuner.{key}", getattr(self, key), 1)


@dataclass
class DefaultsFirst:
    """A tuner that draws candidates: its first may be the space's default one."""

    # the first trial is the space's default candidate (lists' first values, ranges' low ends)
    start_from_defaults: bool = True


@dataclass
class RandomTunerConfig(DefaultsFirst, TrialsTunerConfig):
    """keras_tuner.RandomSearch."""

    name: TunerName = TunerName.random


@dataclass
class BayesianTunerConfig(DefaultsFirst, TrialsTunerConfig):
    """keras_tuner.BayesianOptimization (Gaussian process)."""

    name: TunerName = TunerName.bayesian
    num_initial_points: int | None = None   # null: 3 x the number of hyperparameters
    alpha: float = 1e-4
    beta: float = 2.6

    def oracle_options(self) -> dict[str, Any]:
        return {**super().oracle_options(), "num_initial_points": self.num_initial_points,
                "alpha": self.alpha, "beta": self.beta}


@dataclass
class GridTunerConfig(TrialsTunerConfig):
    """keras_tuner.GridSearch: every combination of a finite space, up to ``max_trials``."""

    name: TunerName = TunerName.grid
    max_trials: int = 50


@dataclass
class HyperbandTunerConfig(DefaultsFirst, TunerConfig):
    """keras_tuner.Hyperband: its brackets decide the trials and stop them early."""

    name: TunerName = TunerName.hyperband
    max_epochs: int = 10
    factor: int = 3
    hyperband_iterations: int = 1

    def oracle_options(self) -> dict[str, Any]:
        return {"max_epochs": self.max_epochs, "factor": self.factor,
                "hyperband_iterations": self.hyperband_iterations}

    def validate(self) -> None:
        super().validate()
        for key in ("max_epochs", "hyperband_iterations"):
            _at_least(f"tuner.{key}", getattr(self, key), 1)
        if self.factor < 2:
            raise UserError(f"tuner.factor must be >= 2 (Hyperband keeps 1/factor of the "
                            f"trials per round), got {self.factor}")


TUNER_CONFIGS: dict[TunerName, type[TunerConfig]] = {
    TunerName.random: RandomTunerConfig, TunerName.bayesian: BayesianTunerConfig,
    TunerName.grid: GridTunerConfig, TunerName.hyperband: HyperbandTunerConfig}


def _at_least(key: str, value: int, least: int) -> None:
    if value < least:
        raise UserError(f"{key} must be >= {least}, got {value}")


@dataclass
class TrainingConfig:
    """How every candidate trains."""

    epochs: int = 30
    batch_size: int = 32
    early_stopping_patience: int | None = 5
    # epochs without improvement of the objective before the learning rate is multiplied
    # by reduce_lr_factor (ReduceLROnPlateau); null: never
    reduce_lr_patience: int | None = 2
    reduce_lr_factor: float = 0.3
    mixed_precision: bool = False
    jit_compile: Any = "auto"   # true | false | auto

    def validate(self) -> None:
        """Raises UserError naming the first value that cannot work."""
        if self.epochs < 1:
            raise UserError(f"training.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"training.batch_size must be >= 1, got {self.batch_size}")
        for key in ("early_stopping_patience", "reduce_lr_patience"):
            patience = getattr(self, key)
            if patience is not None and patience < 1:
                raise UserError(f"training.{key} must be >= 1 or null, got {patience}")
        if not 0 < self.reduce_lr_factor < 1:
            raise UserError(f"training.reduce_lr_factor must be between 0 and 1 (exclusive), "
                            f"got {self.reduce_lr_factor}")
        if self.jit_compile not in (True, False, "auto"):
            raise UserError(f"training.jit_compile must be true, false or auto, "
                            f"got {self.jit_compile!r}")


@dataclass
class FinalFitConfig:
    enabled: bool = True
    epochs: int | None = None
    schedule: Schedule = Schedule.cosine

    def validate(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"final_fit.epochs must be >= 1 or null, got {self.epochs}")


@dataclass
class BudgetConfig:
    """One total budget for the whole command (search/budget.py)."""

    seconds: float | None = None   # from start to the test accuracy; null: no total budget

    def validate(self) -> None:
        if self.seconds is not None and self.seconds <= 0:
            raise UserError(f"budget.seconds must be > 0 or null, got {self.seconds}")


@dataclass
class ReevaluateConfig:
    """Top-k re-evaluation before the final fit (search/reevaluate.py)."""

    top_k: int | None = None   # the k best trials train once more; null: off

    def validate(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"reevaluate.top_k must be >= 1 or null (off), got {self.top_k}")


@dataclass
class DistributedConfig:
    """Several trials at once: a chief hands out trials (keras-tuner's gRPC oracle) to
    worker processes, on this host and on others."""

    workers: int = 1   # trials at once on this host, the chief's own included; 1: one process
    workers_per_gpu: int = 1   # with GPUs: workers sharing one GPU (memory growth on)
    role: Role | None = None   # null: chief + the workers here; chief | worker: see README
    bind: str = "127.0.0.1:0"  # role=chief: where the chief listens (port 0: any free port)
    chief: str | None = None   # role=worker: the chief's HOST:PORT
    connect_timeout: float = 60.0   # seconds a worker waits for the chief to answer
    trial_timeout: float | None = None   # a trial running longer is failed (lost worker)

    def validate(self) -> None:
        """Raises UserError naming the first value that cannot work."""
        least = 0 if self.role is not None else 1
        if self.workers < least:
            raise UserError(f"distributed.workers must be >= {least}"
                            + ("" if least else " (0 only with distributed.role=chief, "
                               "for a chief whose workers run elsewhere)")
                            + f", got {self.workers}")
        if self.workers_per_gpu < 1:
            raise UserError(f"distributed.workers_per_gpu must be >= 1, got "
                            f"{self.workers_per_gpu}")
        if self.role == Role.worker and not self.chief:
            raise UserError("distributed.role=worker needs distributed.chief=HOST:PORT")
        if self.connect_timeout <= 0:
            raise UserError(f"distributed.connect_timeout must be > 0, got "
                            f"{self.connect_timeout}")
        if self.trial_timeout is not None and self.trial_timeout <= 0:
            raise UserError(f"distributed.trial_timeout must be > 0 or null, got "
                            f"{self.trial_timeout}")
        address("distributed.bind", self.bind, any_port=True)
        if self.chief:
            address("distributed.chief", self.chief)

    @property
    def enabled(self) -> bool:
        """False for the classic single-process sweep."""
        return self.role is not None or self.workers > 1

    @property
    def chief_trains(self) -> bool:
        """The chief trains trials too: one of ``workers`` (a chief with 0 only serves)."""
        return self.enabled and self.role != Role.worker and self.workers >= 1

    @property
    def worker_processes(self) -> int:
        """The worker processes started on this host (by a chief, or for one elsewhere)."""
        if not self.enabled:
            return 0
        return self.workers - 1 if self.chief_trains else self.workers


def address(key: str, text: str, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); raises UserError naming ``key`` if it is not one."""
    host, colon, port = str(text).rpartition(":")
    least = 0 if any_port else 1
    if not colon or not host or not port.isdigit() or not least <= int(port) <= 65535:
        raise UserError(f"{key} must be HOST:PORT with a port from {least} to 65535, "
                        f"got {text!r}")
    return host.strip("[]"), int(port)


def cannot_listen(host: str, port: int) -> UserError:
    """The one line for a chief that cannot listen at ``distributed.bind``."""
    return UserError(f"distributed.bind={host}:{port}: the chief cannot listen there "
                     "(port in use, or not an address of this host)")
