"""Resuming a sweep continues its parent run and adds a trial run only for a new trial."""

from __future__ import annotations

import pytest

from tests.tracking.conftest import open_experiment, run_cli

pytestmark = pytest.mark.slow

SWEEP = ["experiment=quick", "training.epochs=2", "data.limit=200"]


def _trial_runs(store, parent_id: str) -> dict[str, str]:
    """trial id -> run id of a parent's trial runs (duplicates fail)."""
    runs = store.children_of(parent_id)
    ids = {run.data.tags["cnnsearch.trial_id"]: run.info.run_id for run in runs}
    assert len(ids) == len(runs) == len(store.children), "duplicate or stray trial runs"
    return ids


def test_resume_adds_no_duplicate_runs_and_new_trials_join_the_same_parent(tmp_path):
    args = ["sweep", f"paths.root={tmp_path}", *SWEEP]
    first = run_cli(*args, "tuner.max_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    store = open_experiment(tmp_path)
    (parent,) = store.parents
    trials = _trial_runs(store, parent.info.run_id)
    assert len(trials) == 3

    again = run_cli(*args, "tuner.max_trials=3")   # every trial done already
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming sweep" in again.stderr
    (resumed,) = store.parents
    assert resumed.info.run_id == parent.info.run_id
    assert resumed.info.status == "FINISHED"
    assert _trial_runs(store, parent.info.run_id) == trials
    assert resumed.data.metrics["n_trials"] == 3

    more = run_cli(*args, "tuner.max_trials=4")
    assert more.returncode == 0, more.stderr[-3000:]
    (resumed,) = store.parents
    assert resumed.info.run_id == parent.info.run_id
    assert resumed.info.status == "FINISHED"
    grown = _trial_runs(store, parent.info.run_id)
    assert len(grown) == 4
    assert {k: v for k, v in grown.items() if k in trials} == trials
    (new,) = set(grown) - set(trials)
    assert store.client.get_run(grown[new]).info.status == "FINISHED"
    assert resumed.data.metrics["n_trials"] == 4


def test_resume_closes_the_run_of_a_trial_completed_before_a_kill(tmp_path):
    # a kill after keras-tuner saved a trial COMPLETED but before its run was closed
    # leaves that run KILLED (marked so by the next start): the resume closes it FINISHED
    args = ["sweep", f"paths.root={tmp_path}", *SWEEP, "tuner.max_trials=2"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    store = open_experiment(tmp_path)
    (parent,) = store.parents
    run_id = _trial_runs(store, parent.info.run_id)["0"]
    store.client.set_tag(run_id, "cnnsearch.status", "killed")
    store.client.set_terminated(run_id, "KILLED")

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["cnnsearch.status"] == "completed"
    assert run.data.tags["cnnsearch.reason"].startswith("closed on resume")
    assert _trial_runs(store, parent.info.run_id)["0"] == run_id
