"""Live sweep progress: a rich display on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cnnsearch.search.events import SweepInfo, SweepObserver, SweepResult, TrialOutcome, TrialState

log = logging.getLogger("cnnsearch")


class ProgressDisplay(SweepObserver):
    """Shows trial i/N, the current candidate, its epoch, the best score and elapsed time.

    Args:
        console: where to draw; a non-terminal console gets log lines instead.
        live: force the live display on or off (a distributed chief: log lines, as its
            workers' lines are relayed between them).
    """

    def __init__(self, console: Console, live: bool | None = None) -> None:
        self.live = console.is_terminal if live is None else live
        self.progress = Progress(
            TextColumn("[bold]trial"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
        ) if self.live else None
        self.task = None
        self.best: float | None = None
        self.maximize = True
        self.candidate = ""
        self.started = time.perf_counter()

    def sweep_started(self, info: SweepInfo) -> None:
        self.maximize = info.maximize
        verb = "resuming" if info.resumed else "starting"
        log.info("%s sweep %s in %s", verb, info.name, info.directory)
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=info.max_trials, status="")

    def worker_started(self, info: SweepInfo) -> None:
        self.maximize = info.maximize
        log.info("worker: training trials of sweep %s", info.name)

    def trial_started(self, trial_id: str, values: dict, candidate) -> None:
        self.candidate = candidate.architecture.summary()
        if self.progress:
            self._status(f"{self.candidate}  epoch 0")
        else:
            log.info("trial %s: %s (lr %.2g)", trial_id, self.candidate, candidate.learning_rate)

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict) -> None:
        if self.progress:
            acc = logs.get("val_accuracy")
            self._status(f"{self.candidate}  epoch {epoch + 1}"
                         + (f" val_acc {acc:.4f}" if acc is not None else ""))

    def trial_ended(self, outcome: TrialOutcome) -> None:
        score = outcome.score
        if score is not None and (self.best is None or
                                  (score > self.best if self.maximize else score < self.best)):
            self.best = score
        if self.progress:
            self.progress.advance(self.task)
            self._status("")
        if outcome.status == TrialState.failed:
            log.warning("trial %s failed: %s", outcome.trial_id, outcome.reason)
        elif not self.progress:
            log.info("trial %s: score %.4f after %d epochs (%.1fs, RSS %.0f MB); best so far "
                     "%.4f; elapsed %.0fs", outcome.trial_id, outcome.score, outcome.epochs_run,
                     outcome.train_seconds, outcome.rss_mb, self.best,
                     time.perf_counter() - self.started)

    def candidate_skipped(self, reason: str, values: dict) -> None:
        log.debug("skipped candidate: %s", reason)

    def sweep_ended(self, result: SweepResult, model) -> None:
        self._stop()

    def sweep_failed(self, error: BaseException) -> None:
        self._stop()

    def _status(self, text: str) -> None:
        best = f"  best {self.best:.4f}" if self.best is not None else ""
        self.progress.update(self.task, status=text + best)

    def _stop(self) -> None:
        if self.progress:
            self.progress.stop()
