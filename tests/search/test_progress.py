"""search.progress: the best-so-far the user watches follows the objective's direction."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from cnnsearch.search.events import SweepInfo, TrialOutcome
from cnnsearch.search.progress import ProgressDisplay


def _outcome(trial_id: str, score: float | None) -> TrialOutcome:
    return TrialOutcome(trial_id, "completed" if score is not None else "failed",
                        None if score is not None else "boom", score, None, 2, 1.0, 10.0, 100.0)


@pytest.mark.parametrize(("objective", "maximize", "best"),
                         [("val_accuracy", True, 0.5), ("val_loss", False, 0.3)])
def test_best_so_far_follows_the_objectives_direction(caplog, objective, maximize, best):
    display = ProgressDisplay(Console(file=io.StringIO()))   # not a terminal: log lines
    display.sweep_started(SweepInfo("s", "/tmp/s", {}, "hash", 3, False,
                                    objective=objective, maximize=maximize))
    with caplog.at_level(logging.INFO, logger="cnnsearch"):
        for trial_id, score in (("0", 0.4), ("1", 0.3), ("2", None), ("3", 0.5)):
            display.trial_ended(_outcome(trial_id, score))
    assert display.best == best
    assert f"best so far {best:.4f}" in caplog.records[-1].getMessage()
