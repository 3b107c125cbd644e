"""SIGKILL each process a sweep starts besides its own (issue 23): the MLflow recorder
of a one-process sweep and of a distributed chief (while it trains, and while a worker
does: the host's one recorder, issue 27), and the chief itself during its final fit.
(The chief killed mid-trial and a worker killed mid-trial are in
tests/search/test_distributed.py; the tracking server in tests/tracking/test_server.py.)

A killed recorder is restarted and sent again what it had not acknowledged: the sweep
goes on and exits 0, with every trial recorded once, whole, and nothing RUNNING. A
killed chief is resumed by the same command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.reliability.consistency import SWEEP, check_consistent, completed_trials, wait_for
from tests.search.test_distributed import SWEEP as TWO_WORKERS
from tests.search.test_distributed import (
    _check_one_parent_six_trials,
    _chief_in_a_trial,
    _first_trial,
    _local_worker,
)
from tests.tracking.conftest import (
    open_experiment,
    run_cli,
    start_cli,
    wait_for_an_epoch,
    wait_for_text,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]   # ~40-90 s each


def _recorder_of(process: psutil.Process) -> psutil.Process:
    """The MLflow recorder child of ``process`` (multiprocessing's spawned child)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [p for p in process.children() if "spawn_main" in " ".join(p.cmdline())]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"no recorder process under pid {process.pid}")


def _kill(process: psutil.Process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _check_recorded_once_and_whole(store) -> None:
    """No trial's run was killed or doubled by the restart; no epoch logged twice."""
    for child in store.children:
        assert child.info.status == "FINISHED", (child.info.run_id, child.info.status)
        steps = [m.step for m in store.client.get_metric_history(child.info.run_id,
                                                                 "val_accuracy")]
        assert steps == sorted(set(steps)) and steps, steps
        assert steps == list(range(len(steps))), steps


def _check_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "restarted" in stderr, stderr[-3000:]   # the one warning line of the restart


@pytest.mark.parametrize("marker, delay", [("trial 0: score", 0.3),   # mid-trial
                                           ("FILE:best_model.keras", 0.0)],  # logging the model
                         ids=["mid-trial", "logging-the-model"])
def test_a_killed_recorder_of_a_one_process_sweep_is_restarted(tmp_path, marker, delay):
    root, stderr = tmp_path / "out", tmp_path / "sweep.err"
    sweep = start_cli(*SWEEP, f"paths.root={root}", stderr_path=stderr)
    try:
        wait_for(marker, root, stderr, sweep)
        time.sleep(delay)
        before = completed_trials(root)
        _kill(_recorder_of(psutil.Process(sweep.pid)))
        assert sweep.wait(timeout=600) == 0, stderr.read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    _check_no_traceback(stderr.read_text())
    check_consistent(root, before)
    _check_recorded_once_and_whole(open_experiment(root))


def _wait_chief(chief: subprocess.Popen, stderr: Path) -> str:
    assert chief.wait(timeout=600) == 0, stderr.read_text()[-3000:]
    return stderr.read_text()


def test_a_killed_recorder_of_the_chief_is_restarted(tmp_path):
    with _chief_in_a_trial(tmp_path, "training.epochs=4") as (chief, stderr):
        _kill(_recorder_of(psutil.Process(chief.pid)))
        text = _wait_chief(chief, stderr)
    _check_no_traceback(text)
    _check_one_parent_six_trials(tmp_path)
    _check_recorded_once_and_whole(open_experiment(tmp_path))


def test_a_killed_host_recorder_loses_none_of_a_workers_records(tmp_path):
    # a local worker records through the chief's recorder: one per host (issue 27)
    with _chief_in_a_trial(tmp_path, "training.epochs=4") as (chief, stderr):
        index, trial_id = _first_trial(stderr)
        worker = _local_worker(chief, index)
        assert not [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())]
        wait_for_an_epoch(tmp_path, chief, trial_id)   # inside the trial's fit
        _kill(_recorder_of(psutil.Process(chief.pid)))
        text = _wait_chief(chief, stderr)
    _check_no_traceback(text)
    assert "failed" not in text.split("final fit")[0], text[-3000:]
    _check_one_parent_six_trials(tmp_path)
    _check_recorded_once_and_whole(open_experiment(tmp_path))


def test_a_chief_killed_in_its_final_fit_is_resumed_by_the_same_command(tmp_path):
    args = [*TWO_WORKERS, f"paths.root={tmp_path}", "distributed.workers=2",
            "training.epochs=3", "data.limit=1000"]
    stderr = tmp_path / "chief.err"
    chief = start_cli(*args, stderr_path=stderr)
    try:
        wait_for_text(stderr, "final fit:", chief, timeout=600)   # printed as it begins
        chief.send_signal(signal.SIGKILL)   # the chief alone, as the OOM killer would
        chief.wait()
    finally:
        if chief.poll() is None:
            os.killpg(chief.pid, signal.SIGKILL)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming sweep" in again.stderr
    _check_one_parent_six_trials(tmp_path)
    assert (tmp_path / "sweeps" / "two" / "best_model.keras").is_file()
