"""A sweep killed (SIGKILL) or stopped (SIGTERM) mid-trial never leaves a run RUNNING for
good: SIGTERM closes its runs KILLED; after SIGKILL the next command marks them KILLED."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.tracking.conftest import (
    open_experiment,
    run_cli,
    start_cli,
    stop_tree,
    wait_for_an_epoch,
    wait_for_text,
)

pytestmark = pytest.mark.slow

# Trials long enough (1000 epochs, no early stopping) to be interrupted in the middle.
LONG = ["experiment=quick", "tuner.max_trials=5", "training.epochs=1000", "data.limit=200",
        "training.early_stopping_patience=null"]


def _start_and_wait_for_a_trial(tmp_path):
    """A long sweep in the background, once its first trial run is in the store."""
    root, stderr = tmp_path / "out", tmp_path / "sweep.err"
    sweep = start_cli("sweep", f"paths.root={root}", *LONG, stderr_path=stderr)
    # the store is fully created once the parent run is announced: only then open it here
    wait_for_text(stderr, "MLflow: parent run", sweep, timeout=240)
    wait_for_an_epoch(root, sweep)   # its first trial's run exists, inside fit by now
    return sweep, root, open_experiment(root), stderr


def test_sigkill_leaves_running_runs_that_the_next_command_marks_killed(tmp_path):
    sweep, root, store, _ = _start_and_wait_for_a_trial(tmp_path)
    # the runs are written by the sweep's MLflow recorder, a child process
    (recorder,) = [child for child in psutil.Process(sweep.pid).children()
                   if "spawn_main" in " ".join(child.cmdline())]
    try:
        os.killpg(sweep.pid, signal.SIGKILL)
        assert sweep.wait(timeout=60) == -signal.SIGKILL   # reaped: its pid is gone
    finally:
        stop_tree(sweep)
    (parent,) = store.parents
    (child,) = store.children
    assert parent.info.status == child.info.status == "RUNNING"   # nobody closed them

    done = run_cli("results", f"paths.root={root}")
    assert done.returncode == 0, done.stderr
    assert "killed" in done.stdout
    (parent,) = store.parents
    (child,) = store.children
    assert parent.info.status == child.info.status == "KILLED"
    assert child.data.tags["cnnsearch.status"] == "killed"
    assert child.data.tags["cnnsearch.pid"] == str(recorder.pid)
    assert str(recorder.pid) in child.data.tags["cnnsearch.reason"]


def test_sigterm_closes_the_runs_killed(tmp_path):
    sweep, _, store, stderr = _start_and_wait_for_a_trial(tmp_path)
    try:
        sweep.send_signal(signal.SIGTERM)   # the sweep alone, as `kill <pid>` would
        code = sweep.wait(timeout=120)
    finally:
        stop_tree(sweep)
    assert code == 130, stderr.read_text()[-3000:]   # "cnnsearch: interrupted", one line
    (parent,) = store.parents
    children = store.children
    assert parent.info.status == "KILLED", stderr.read_text()[-3000:]
    assert "signal 15" in parent.data.tags["cnnsearch.reason"]
    assert len(children) == 1   # stopped in its first trial: no further trial started
    (child,) = children
    assert child.info.status == "KILLED"
    assert child.data.tags["cnnsearch.status"] == "killed"
    assert "KeyboardInterrupt" in child.data.tags["cnnsearch.reason"]
