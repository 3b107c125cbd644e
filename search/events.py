"""What a sweep tells the outside world (progress display, MLflow) as it runs.

An observer is any object with some of the methods of :class:`SweepObserver`;
:class:`Observers` fans each event out to all of them. Observers receive plain
values, so ``tracking`` needs nothing from keras-tuner or from search internals.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

BEST_MODEL_FILE = "best_model.keras"   # the final model, in the sweep folder, before sweep_ended


class Objective(StrEnum):
    """What a trial's score is (``tuner.objective``)."""

    val_accuracy = "val_accuracy"
    accuracy = "accuracy"
    val_loss = "val_loss"
    loss = "loss"

    @property
    def default_direction(self) -> Direction:
        return Direction.max if self.endswith("accuracy") else Direction.min


class Direction(StrEnum):
    min = "min"
    max = "max"


class TrialState(StrEnum):
    """A trial's state, as ``TrialOutcome.status`` and its run's ``cnnsearch.status`` tag
    spell it."""

    running = "running"
    completed = "completed"
    failed = "failed"
    killed = "killed"


@dataclass(frozen=True)
class SweepInfo:
    """Known when a sweep starts."""

    name: str
    directory: str
    config: dict
    space_hash: str
    max_trials: int | None
    resumed: bool
    params: dict = field(default_factory=dict)   # the config keys the sweep uses
    dataset: dict = field(default_factory=dict)  # name, digest, source, profile
    objective: str = "val_accuracy"   # what a trial's score is
    maximize: bool = True             # its direction
    # trial id -> best metrics of each trial keras-tuner completed before this start
    completed_trials: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended."""

    trial_id: str
    status: TrialState            # completed | failed
    reason: str | None            # why it failed
    score: float | None
    best_val_accuracy: float | None
    epochs_run: int
    train_seconds: float
    images_per_second: float
    rss_mb: float                 # resident memory of the process after the trial
    stopped_early: str | None = None   # why a completed trial trained fewer epochs


@dataclass
class SweepResult:
    """What a sweep produced."""

    name: str
    directory: str
    best_trial_id: str | None = None
    best_values: dict = field(default_factory=dict)
    architecture: str = ""
    params: int = 0
    flops: int = 0
    best_val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    final_fit_epochs: int | None = None   # the epochs the final fit trained
    n_completed: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_reason: str | None = None
    model_path: str | None = None   # the final model (.keras), in the sweep folder
    run_id: str | None = None       # the sweep's MLflow parent run (None: tracking=none)
    leaderboard: Any = None         # the Python API's: the sweep's leaderboard DataFrame


def trial_record(candidate: Any) -> SimpleNamespace:
    """What a trial's record needs of its candidate, as plain values (no search classes
    travel to the recorder), and which process trains it (``host:pid``; a record relayed
    from a worker keeps the worker's)."""
    here = f"{socket.gethostname()}:{os.getpid()}"
    return SimpleNamespace(architecture=candidate.architecture,
                           learning_rate=candidate.learning_rate,
                           trained_by=getattr(candidate, "trained_by", here))


class SweepObserver:
    """No-op base: override the events you care about."""

    def sweep_started(self, info: SweepInfo) -> None: ...
    def trial_started(self, trial_id: str, values: dict, candidate: Any) -> None: ...
    def epoch_ended(self, trial_id: str, epoch: int, logs: dict) -> None: ...
    def trial_ended(self, outcome: TrialOutcome) -> None: ...
    def candidate_skipped(self, reason: str, values: dict) -> None: ...
    def trial_reevaluated(self, trial_id: str, score: float, mean: float) -> None: ...
    def search_ended(self) -> None: ...   # every trial is over; the final fit comes next
    def sweep_ended(self, result: SweepResult, model: Any) -> None: ...
    def sweep_failed(self, error: BaseException) -> None: ...
    # distributed sweeps: a worker process joins; the chief loses a trial
    def worker_started(self, info: SweepInfo) -> None: ...
    def trial_lost(self, trial_id: str, reason: str) -> None: ...


class Observers(SweepObserver):
    """Sends every event to each observer in order."""

    def __init__(self, observers: list) -> None:
        self.observers = list(observers)

    def _send(self, event: str, *args) -> None:
        for observer in self.observers:
            handler = getattr(observer, event, None)
            if handler is not None:
                handler(*args)

    def sweep_started(self, info):
        self._send("sweep_started", info)

    def trial_started(self, trial_id, values, candidate):
        self._send("trial_started", trial_id, values, candidate)

    def epoch_ended(self, trial_id, epoch, logs):
        self._send("epoch_ended", trial_id, epoch, logs)

    def trial_ended(self, outcome):
        self._send("trial_ended", outcome)

    def candidate_skipped(self, reason, values):
        self._send("candidate_skipped", reason, values)

    def trial_reevaluated(self, trial_id, score, mean):
        self._send("trial_reevaluated", trial_id, score, mean)

    def search_ended(self):
        self._send("search_ended")

    def sweep_ended(self, result, model):
        self._send("sweep_ended", result, model)

    def sweep_failed(self, error):
        self._send("sweep_failed", error)

    def worker_started(self, info):
        self._send("worker_started", info)

    def trial_lost(self, trial_id, reason):
        self._send("trial_lost", trial_id, reason)
