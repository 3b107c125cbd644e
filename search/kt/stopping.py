"""The sweep's one stop policy: when the search stops, and when a running trial stops.

One :class:`StopPolicy` per sweep serves a local search and a chief alike (each message
is defined here once):

* the search stops when its time budget (``tuner.max_seconds``) is spent, when the
  command's total budget (``budget.seconds``, search/budget.py) has only its final fit
  and reserve left, or after
  ``tuner.max_consecutive_failed_trials`` failed trials in a row: no trial starts after
  the running ones;
* a running trial stops at an epoch end when the budget is spent, or when its pruner
  judges it hopeless. It ends as a completed trial with its best epoch so far (its
  checkpoint and score are that epoch's).

Pruners are small classes with one method, ``reason``. :class:`MedianPruner`
(``tuner.pruning=median``, as Optuna's MedianPruner and Google Vizier's median
stopping rule): after ``tuner.pruning_warmup_epochs`` epochs, a trial whose best
objective so far is worse than the median of the earlier completed trials' best at
the same epoch stops; it needs ``tuner.pruning_min_trials`` such trials to judge.
Hyperband stops trials its own way and has none.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import keras

from cnnsearch.search.budget import Budget
from cnnsearch.search.config import Pruning, TrialsTunerConfig, TunerConfig
from cnnsearch.search.errors import last_line

log = logging.getLogger(__name__)

History = list[tuple[int, float]]   # (epoch, objective value) of one trial
TIME_SPENT = "time budget spent"   # why a running trial stopped at the budget


def best_up_to(history: History, epoch: int, maximize: bool) -> float | None:
    """Best value among ``(epoch, value)`` pairs up to ``epoch``; None if it never got there."""
    reached = [value for step, value in history if step <= epoch]
    if not reached or max(step for step, _ in history) < epoch:
        return None
    return max(reached) if maximize else min(reached)


def median_at(histories: list[History], epoch: int, maximize: bool) -> tuple[float, int] | None:
    """Median of the other trials' best value up to ``epoch`` and how many had one."""
    bests = [b for h in histories if (b := best_up_to(h, epoch, maximize)) is not None]
    return (statistics.median(bests), len(bests)) if bests else None


class Pruner(Protocol):
    def reason(self, metric: str, maximize: bool, epoch: int, mine: History,
               others: list[History]) -> str | None:
        """Why the trial with history ``mine`` should stop after ``epoch``, or None."""


@dataclass(frozen=True)
class MedianPruner:
    """Median stopping: judge from ``warmup_epochs`` on, with ``min_trials`` to compare."""

    warmup_epochs: int
    min_trials: int

    def reason(self, metric: str, maximize: bool, epoch: int, mine: History,
               others: list[History]) -> str | None:
        if epoch + 1 < self.warmup_epochs or not mine:
            return None
        median = median_at(others, epoch, maximize)
        if median is None or median[1] < self.min_trials:
            return None
        best = best_up_to(mine, epoch, maximize)
        if not (best < median[0] if maximize else best > median[0]):
            return None
        return (f"pruned: best {metric} {best:.4f} by epoch {epoch} is worse than the "
                f"median {median[0]:.4f} of {median[1]} earlier trials")


class StopPolicy:
    """When the search stops (budget, failures) and when a running trial stops (budget,
    pruner); ``stopped_reason`` says why the search stopped early, once decided."""

    def __init__(self, max_seconds: float | None, max_failures: int,
                 pruner: Pruner | None = None, budget: Budget | None = None) -> None:
        """The time budget starts now; ``budget``: the command's total budget, if any."""
        self.max_seconds, self.max_failures, self.pruner = max_seconds, max_failures, pruner
        self.search_deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.budget = budget
        self.stopped_reason: str | None = None

    @classmethod
    def from_config(cls, tuner: TunerConfig, budget: Budget | None = None) -> StopPolicy:
        pruned = isinstance(tuner, TrialsTunerConfig) and tuner.pruning == Pruning.median
        pruner = MedianPruner(tuner.pruning_warmup_epochs, tuner.pruning_min_trials) \
            if pruned else None
        return cls(tuner.max_seconds, tuner.max_consecutive_failed_trials, pruner, budget)

    @property
    def budget_spent(self) -> bool:
        """Only the total budget's final fit and reserve are left."""
        return self.budget is not None and time.monotonic() >= self.budget.search_deadline

    @property
    def out_of_time(self) -> bool:
        return self.budget_spent or (self.search_deadline is not None
                                     and time.monotonic() >= self.search_deadline)

    def search_stop(self, failures: list[str]) -> str | None:
        """Decide, after a trial ended, whether the search stops; returns why it stopped
        (the first reason found sticks), or None.

        ``failures``: the messages of the trials that failed in a row, the latest last.
        """
        if self.stopped_reason is None:
            if self.budget_spent:
                self.stopped_reason = (
                    f"total budget budget.seconds={self.budget.seconds:g}: the rest is the "
                    f"final fit's (planned {self.budget.final_fit_seconds:.0f} s) and the "
                    f"test's")
            elif self.out_of_time:
                self.stopped_reason = f"time budget tuner.max_seconds={self.max_seconds:g} reached"
            elif len(failures) >= self.max_failures:
                self.stopped_reason = (
                    f"Number of consecutive failures reached the limit of {self.max_failures} "
                    f"(tuner.max_consecutive_failed_trials). Last reason: "
                    f"{last_line(failures[-1])}")
        return self.stopped_reason

    def trial_stop(self, metric: str, maximize: bool, epoch: int, mine: History,
                   others: Callable[[], list[History]]) -> str | None:
        """Why a running trial stops after ``epoch``, or None (``others()``: the earlier
        completed trials' histories, asked for only when a pruner judges)."""
        if self.out_of_time:
            return TIME_SPENT
        if self.pruner is None:
            return None
        return self.pruner.reason(metric, maximize, epoch, mine, others())


class StopRules(keras.callbacks.Callback):
    """A trial's end at an epoch end, as its :class:`StopPolicy` decides.

    Shared, not copied, by a trial's executions. ``reason`` says why it stopped.
    """

    def __init__(self, trial_id: str, metric: str, maximize: bool, policy: StopPolicy,
                 others: Callable[[], list[History]]) -> None:
        """``others()``: the earlier completed trials' ``(epoch, value)`` histories."""
        super().__init__()
        self.trial_id, self.metric, self.maximize = trial_id, metric, maximize
        self.policy, self.others = policy, others
        self.history: History = []
        self.reason: str | None = None

    def __deepcopy__(self, memo):   # keras-tuner deep-copies callbacks
        return self

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is not None:
            self.history.append((epoch, float(value)))
        self.reason = self.policy.trial_stop(self.metric, self.maximize, epoch, self.history,
                                             self.others)
        if self.reason:
            log.info("trial %s stops after epoch %d: %s", self.trial_id, epoch, self.reason)
            self.model.stop_training = True
