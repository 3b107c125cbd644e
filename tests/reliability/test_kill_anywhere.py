"""SIGKILL a real sweep (or export) at many points, run the same command again, and check
that nothing was lost or misreported (issue 14).

After each kill and re-run: the trials completed before the kill are neither lost nor
trained again; no MLflow run is left RUNNING; each trial has at most one run that is not
KILLED; the sweep has one parent run, FINISHED; the final model comes from a completed
final fit and loads; the store and the keras-tuner folder open.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.consistency import NAME, SWEEP, check_consistent, completed_trials, wait_for
from tests.tracking.conftest import open_experiment, run_cli, start_cli

pytestmark = [pytest.mark.reliability, pytest.mark.slow]   # ~30 s a kill point

# label -> what to wait for before the kill (a stderr text, or FILE:<name in the sweep
# folder>) and how long to wait after it
POINTS = {
    "start-up (imports, config)": (None, 1.0),
    "after data loading (store set-up)": ("data=digits: train", 0.0),
    "sweep start (parent run)": ("starting sweep", 0.0),
    "first model build": ("trial 0: 8x8", 0.0),
    "inside the first trial's fit": ("trial 0: 8x8", 0.6),
    "between trials (keras-tuner state write)": ("trial 0: score", 0.0),
    "second trial, just after the first": ("trial 0: score", 0.3),
    "final fit": ("final fit:", 0.2),
    "model logging (after best_model.keras)": ("FILE:best_model.keras", 0.0),
    "after registration, before the run closes": ("MLflow: logged model", 0.0),
}


def _kill_at(args: list[str], marker: str | None, delay: float, root: Path,
             stderr: Path) -> None:
    process = start_cli(*args, stderr_path=stderr)
    try:
        wait_for(marker, root, stderr, process)
        time.sleep(delay)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("point", POINTS)
def test_a_sweep_killed_anywhere_resumes_to_a_consistent_end(tmp_path, point):
    root, stderr = tmp_path / "out", tmp_path / "first.err"
    args = [*SWEEP, f"paths.root={root}"]
    _kill_at(args, *POINTS[point], root, stderr)
    before = completed_trials(root)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    check_consistent(root, before)


def test_a_resume_killed_in_turn_still_ends_consistent(tmp_path):
    root = tmp_path / "out"
    args = [*SWEEP, f"paths.root={root}"]
    _kill_at(args, "trial 0: score", 0.0, root, tmp_path / "first.err")
    before = completed_trials(root)
    _kill_at(args, "resuming sweep", 0.5, root, tmp_path / "second.err")
    before.update(completed_trials(root))

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    check_consistent(root, before)


def test_a_killed_export_leaves_no_half_export_and_runs_again(tmp_path):
    root = tmp_path / "out"
    done = run_cli(*SWEEP, f"paths.root={root}")
    assert done.returncode == 0, done.stderr[-3000:]
    export = ["export", "export.format=all", f"paths.root={root}"]
    _kill_at(export, "export keras", 0.0, root, tmp_path / "export.err")
    exports = root / "exports"
    assert not (exports / NAME).exists()   # written in a staging folder, moved at the end

    again = run_cli(*export)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((exports / NAME / "manifest.json").read_text())
    assert set(manifest["files"]) == {"keras", "saved_model", "onnx", "tflite"}
    assert all(record["parity_ok"] for record in manifest["files"].values())
    assert not [r for r in open_experiment(root).parents if r.info.status == "RUNNING"]


def test_the_kill_points_cover_at_least_ten_moments():
    assert len(POINTS) + 2 >= 10   # + a killed resume and a killed export
