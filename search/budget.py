"""``budget.seconds``: the whole command, from its start to the printed test accuracy,
ends within it.

The search gets what the rest does not need. After every trial the final fit is
planned from measured speeds: the best trial so far, its epoch count and the images per
second it trained at, over train + validation; with ``reevaluate.top_k``, the k best
trials' own training times too. The search stops (no new trial, the
running one at its next epoch end) once only that plan and a reserve (the test, saving,
logging) are left. The final fit then trains the planned epochs, fewer where the time
left cannot hold them, and stops at an epoch end that would otherwise overrun.
"""

from __future__ import annotations

import time

import keras

from cnnsearch.search.errors import UserError

RESERVE_SECONDS = 10.0   # at least this is kept for the test, the save and the logging
RESERVE_SHARE = 0.02     # ... or this share of the budget, if more


class Budget:
    """A deadline for the whole command and the plan of its final fit."""

    def __init__(self, seconds: float, started: float) -> None:
        """``started``: ``time.monotonic()`` when the command started."""
        self.seconds = seconds
        self.deadline = started + seconds
        self.reserve = max(RESERVE_SECONDS, RESERVE_SHARE * seconds)
        self.final_fit_seconds = 0.0   # the plan for the best trial so far
        self.reevaluation_seconds = 0.0   # ... and for re-training the k best once more
        self.speeds: dict[str, float] = {}   # trial id -> training images per second

    @property
    def left(self) -> float:
        """Seconds until the final fit must be over."""
        return self.deadline - self.reserve - time.monotonic()

    @property
    def reevaluation_deadline(self) -> float:
        """When the re-evaluation must end so that the planned final fit still fits."""
        return self.deadline - self.reserve - self.final_fit_seconds

    @property
    def search_deadline(self) -> float:
        """When the search must end so that the re-evaluation and final fit still fit."""
        return self.reevaluation_deadline - self.reevaluation_seconds

    def speed(self, trial_id: str) -> float | None:
        """The trial's measured images per second, else the slowest measured (no
        measure of it: a worker trained it, or an earlier run of a resumed sweep)."""
        return self.speeds.get(trial_id) or min(self.speeds.values(), default=None)

    def plan(self, trial_id: str, epochs: int, images: int,
             reevaluation_seconds: float = 0.0) -> None:
        """Plan the final fit, ``epochs`` over ``images`` at the speed of ``trial_id``,
        and a re-evaluation of ``reevaluation_seconds``."""
        speed = self.speed(trial_id)
        self.final_fit_seconds = epochs * images / speed if speed else 0.0
        self.reevaluation_seconds = reevaluation_seconds

    def final_fit_epochs(self, trial_id: str, planned: int, images: int) -> int:
        """``planned``, or fewer (at least 1) where the time left cannot hold them."""
        speed = self.speed(trial_id)
        if not speed:
            return planned
        return max(1, min(planned, int(self.left * speed / images)))


class Deadline(keras.callbacks.Callback):
    """Stops training at an epoch end when one more epoch (as long as the last) would
    end after ``deadline`` (a ``time.monotonic()`` time)."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.stopped_at: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self._began) > self.deadline:
            self.stopped_at = epoch
            self.model.stop_training = True


def check_one_epoch_fits(budget: Budget, model: keras.Model, data, batch_size: int) -> None:
    """Time a few batches of ``model`` (the first candidate) and refuse a budget that
    cannot hold one epoch of it and one epoch of its final fit.

    Raises:
        UserError: naming ``budget.seconds``, the time left and what one epoch takes.
    """
    x, y = data.x_train, data.y_train
    model.train_on_batch(x[:batch_size], y[:batch_size])   # builds and compiles
    batches = max(1, min(4, len(x) // batch_size - 1))
    started = time.monotonic()
    for i in range(1, batches + 1):
        model.train_on_batch(x[i * batch_size:(i + 1) * batch_size],
                             y[i * batch_size:(i + 1) * batch_size])
    per_image = (time.monotonic() - started) / (batches * batch_size)
    needed = per_image * (2 * len(x) + len(data.x_val))
    if needed > budget.left:
        raise UserError(f"budget.seconds={budget.seconds:g} is too small: "
                        f"{max(budget.left, 0):.0f} s are left after start-up and the reserve "
                        f"({budget.reserve:.0f} s), and one epoch of the first candidate and "
                        f"one of its final fit take about {needed:.1f} s here")
