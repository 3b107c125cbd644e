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
import subprocess
import time
from pathlib import Path

import keras
import pytest

from tests.tracking.conftest import open_experiment, run_cli, start_cli

pytestmark = [pytest.mark.reliability, pytest.mark.slow]   # ~30 s a kill point

NAME = "killed"
SWEEP = ["sweep", "experiment=quick", "tuner.max_trials=3", "training.epochs=3",
         "data.limit=1000", f"sweep.name={NAME}"]

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


def _wait(marker: str | None, root: Path, stderr: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if marker is None:
            return
        if marker.startswith("FILE:"):
            if (root / "sweeps" / NAME / marker[5:]).exists():
                return
        elif marker in stderr.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {marker!r}:\n"
                        f"{stderr.read_text()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"{marker!r} never came:\n{stderr.read_text()[-3000:]}")


def _kill_at(args: list[str], marker: str | None, delay: float, root: Path,
             stderr: Path) -> None:
    process = start_cli(*args, stderr_path=stderr)
    try:
        _wait(marker, root, stderr, process)
        time.sleep(delay)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _completed_trials(root: Path) -> dict[str, tuple[bytes, int]]:
    """trial folder -> (trial.json bytes, mtime) of every COMPLETED keras-tuner trial."""
    done = {}
    for path in (root / "sweeps" / NAME / "tuner").glob("trial_*/trial.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):   # cut off mid-write by the kill: not completed
            continue
        if state.get("status") == "COMPLETED":
            done[path.parent.name] = (path.read_bytes(), path.stat().st_mtime_ns)
    return done


def _check_consistent(root: Path, before: dict[str, tuple[bytes, int]]) -> None:
    after = _completed_trials(root)
    assert len(after) == 3, sorted(after)
    for trial, state in before.items():   # not lost, not trained again
        assert after[trial] == state, trial
    store = open_experiment(root)
    runs = [*store.parents, *store.children]
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    (parent,) = [p for p in store.parents if p.info.run_name == NAME]
    assert parent.info.status == "FINISHED"
    live = [c.data.tags["cnnsearch.trial_id"] for c in store.children_of(parent.info.run_id)
            if c.info.status != "KILLED"]
    assert sorted(live) == sorted(set(live)) and len(set(live)) == 3, live
    models = store.client.search_logged_models(
        [store.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    statuses = sorted(str(m.status) for m in models)   # a killed logging ends FAILED
    assert "PENDING" not in statuses and statuses.count("READY") >= 1, statuses
    result = json.loads((root / "sweeps" / NAME / "result.json").read_text())
    assert result["n_completed"] == 3 and result["test_accuracy"] is not None
    model = keras.saving.load_model(root / "sweeps" / NAME / "best_model.keras")
    assert model.count_params() == result["params"]


@pytest.mark.parametrize("point", POINTS)
def test_a_sweep_killed_anywhere_resumes_to_a_consistent_end(tmp_path, point):
    root, stderr = tmp_path / "out", tmp_path / "first.err"
    args = [*SWEEP, f"paths.root={root}"]
    _kill_at(args, *POINTS[point], root, stderr)
    before = _completed_trials(root)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    _check_consistent(root, before)


def test_a_resume_killed_in_turn_still_ends_consistent(tmp_path):
    root = tmp_path / "out"
    args = [*SWEEP, f"paths.root={root}"]
    _kill_at(args, "trial 0: score", 0.0, root, tmp_path / "first.err")
    before = _completed_trials(root)
    _kill_at(args, "resuming sweep", 0.5, root, tmp_path / "second.err")
    before.update(_completed_trials(root))

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    _check_consistent(root, before)


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
