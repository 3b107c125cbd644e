"""Several sweeps at once on one brand-new local store (issue 14): none dies in MLflow's
schema creation, no run is lost, the store opens afterwards; reading the store while a
sweep writes gives consistent answers."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import error_lines
from tests.tracking.conftest import (
    CNNSEARCH,
    cli_env,
    run_cli,
    start_cli,
    stop_tree,
    store_client,
    wait_for_text,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]   # ~1 min each: real sweeps

SWEEPS = 4
TRIALS = 2


def test_four_sweeps_started_at_once_on_a_new_store_all_finish(tmp_path):
    root = tmp_path / "out"
    args = ["experiment=quick", f"tuner.max_trials={TRIALS}", "training.epochs=1",
            "data.limit=200", f"paths.root={root}"]
    processes = [subprocess.Popen([str(CNNSEARCH), "sweep", *args, f"sweep.name=s{i}",
                                   f"seed={i}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=cli_env())
                 for i in range(SWEEPS)]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    for process, stderr in zip(processes, errors, strict=True):
        assert process.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr and "Traceback" not in stderr

    client = store_client(root)
    (experiment,) = [e for e in client.search_experiments() if e.name == "digits"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("cnnsearch.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("cnnsearch.role") == "trial"]
    assert sorted(r.info.run_name for r in parents) == [f"s{i}" for i in range(SWEEPS)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(children) == SWEEPS * TRIALS
    for parent in parents:
        mine = [c for c in children
                if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len({c.data.tags["cnnsearch.trial_id"] for c in mine}) == TRIALS
    versions = client.search_model_versions("name = 'cnnsearch-digits'")
    assert sorted(int(v.version) for v in versions) == list(range(1, SWEEPS + 1))


def test_results_and_export_while_a_sweep_writes(tmp_path):
    """Read while a sweep records: `results` shows the running sweep as it stands, and
    `export` refuses it in one line (it has no final model yet); the sweep is unharmed."""
    root, stderr = tmp_path / "out", tmp_path / "sweep.err"
    sweep = start_cli("sweep", "experiment=quick", "tuner.max_trials=100",   # minutes long
                      "training.epochs=40", "training.early_stopping_patience=null",
                      "data.limit=200", f"paths.root={root}", stderr_path=stderr)
    try:
        wait_for_text(stderr, ": score ", sweep, timeout=300)   # a trial is recorded
        results = run_cli("results", f"paths.root={root}")
        export = run_cli("export", f"paths.root={root}")
        assert sweep.poll() is None   # still training
    finally:
        stop_tree(sweep)
    assert results.returncode == 0, results.stderr[-3000:]
    assert "completed" in results.stdout and "running" in results.stdout
    assert export.returncode == 2, export.stderr[-3000:]
    (line,) = error_lines(export.stderr)
    assert "is RUNNING and has no final model" in line
    assert not (root / "exports").exists()
