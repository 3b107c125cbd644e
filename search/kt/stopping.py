"""When a trial stops training before its epoch count: the time budget, median stopping.

Both are checked at each epoch end, so the trial ends as a completed trial with its
best epoch so far (its checkpoint and score are that epoch's):

* the sweep's time budget (``tuner.max_seconds``) is spent: the running trial ends
  too, not only the ones after it;
* median stopping (``tuner.pruning=median``, as Optuna's MedianPruner and Google
  Vizier's median stopping rule): after ``tuner.pruning_warmup_epochs`` epochs, a
  trial whose best objective so far is worse than the median of the earlier
  completed trials' best at the same epoch stops. It needs ``tuner.pruning_min_trials``
  such trials to judge; Hyperband already stops trials its own way and is left alone.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras

log = logging.getLogger(__name__)


def budget_reached(max_seconds: float) -> str:
    """Why a search stopped at its time budget: one message, a local sweep's or a chief's."""
    return f"time budget tuner.max_seconds={max_seconds:g} reached"


def too_many_failures(count: int) -> str:
    """Why a chief stopped after ``count`` failed trials in a row."""
    return f"{count} consecutive failed trials (tuner.max_consecutive_failed_trials)"


@dataclass(frozen=True)
class PruningRule:
    """Median stopping: judge from ``warmup_epochs`` on, with ``min_trials`` to compare."""

    warmup_epochs: int
    min_trials: int


def best_up_to(history: list[tuple[int, float]], epoch: int, maximize: bool) -> float | None:
    """Best value among ``(epoch, value)`` pairs up to ``epoch``; None if it never got there."""
    reached = [value for step, value in history if step <= epoch]
    if not reached or max(step for step, _ in history) < epoch:
        return None
    return max(reached) if maximize else min(reached)


def median_at(histories: list[list[tuple[int, float]]], epoch: int,
              maximize: bool) -> tuple[float, int] | None:
    """Median of the other trials' best value up to ``epoch`` and how many had one."""
    bests = [b for h in histories if (b := best_up_to(h, epoch, maximize)) is not None]
    return (statistics.median(bests), len(bests)) if bests else None


class StopRules(keras.callbacks.Callback):
    """Ends training at an epoch end when the budget is spent or the trial is hopeless.

    Shared, not copied, by a trial's executions. ``reason`` says why it stopped.
    """

    def __init__(self, trial_id: str, metric: str, maximize: bool, deadline: float | None,
                 pruning: PruningRule | None,
                 others: Callable[[], list[list[tuple[int, float]]]]) -> None:
        """``deadline``: a ``time.monotonic()`` time, or None; ``pruning``: None for none;
        ``others()``: the earlier completed trials' ``(epoch, value)`` histories."""
        super().__init__()
        self.trial_id, self.metric, self.maximize = trial_id, metric, maximize
        self.deadline, self.pruning, self.others = deadline, pruning, others
        self.history: list[tuple[int, float]] = []
        self.reason: str | None = None

    def __deepcopy__(self, memo):   # keras-tuner deep-copies callbacks
        return self

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.metric)
        if value is not None:
            self.history.append((epoch, float(value)))
        self.reason = self._reason(epoch)
        if self.reason:
            log.info("trial %s stops after epoch %d: %s", self.trial_id, epoch, self.reason)
            self.model.stop_training = True

    def _reason(self, epoch: int) -> str | None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "time budget spent"
        rule = self.pruning
        if rule is None or epoch + 1 < rule.warmup_epochs or not self.history:
            return None
        median = median_at(self.others(), epoch, self.maximize)
        if median is None or median[1] < rule.min_trials:
            return None
        mine = best_up_to(self.history, epoch, self.maximize)
        worse = mine < median[0] if self.maximize else mine > median[0]
        if not worse:
            return None
        return (f"pruned: best {self.metric} {mine:.4f} by epoch {epoch} is worse than the "
                f"median {median[0]:.4f} of {median[1]} earlier trials")
