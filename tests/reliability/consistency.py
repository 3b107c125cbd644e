"""The sweep the fault-injection tests break, and what must hold after it is run again."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import keras
import pytest

from tests.tracking.conftest import Store, open_experiment

NAME = "killed"
SWEEP = ["sweep", "experiment=quick", "tuner.max_trials=3", "training.epochs=3",
         "data.limit=1000", f"sweep.name={NAME}"]


def wait_for(marker: str | None, root: Path, stderr: Path, process: subprocess.Popen) -> None:
    """Wait until the sweep printed ``marker`` or made ``FILE:<name>`` in its folder."""
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


def completed_trials(root: Path) -> dict[str, tuple[bytes, int]]:
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


def check_consistent(root: Path, before: dict[str, tuple[bytes, int]],
                     store: Store | None = None) -> None:
    """What must hold once the broken sweep has been run again to its end (``store``: the
    sweep's MLflow experiment, when not the local store under ``root``)."""
    after = completed_trials(root)
    assert len(after) == 3, sorted(after)
    for trial, state in before.items():   # not lost, not trained again
        assert after[trial] == state, trial
    store = store or open_experiment(root)
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
