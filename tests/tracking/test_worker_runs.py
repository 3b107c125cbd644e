"""A distributed sweep's trial runs end with it: the runs its workers left open are closed
by the chief's recorder when the sweep stops (a worker killed before it closed its run)."""

from __future__ import annotations

from types import SimpleNamespace

from cnnsearch.models.architecture import Architecture, Block
from cnnsearch.tracking.config import TrackingConfig
from cnnsearch.tracking.runs import MlflowRecorder

ARCH = Architecture((8, 8, 1), 10, (Block(filters=4, kernel_size=3),))


def _recorders(tmp_path) -> tuple[MlflowRecorder, MlflowRecorder]:
    """The chief's recorder, with its parent run, and a worker's, joined to it."""
    spec = TrackingConfig(experiment="digits", registered_model="cnnsearch-digits",
                          root=str(tmp_path))
    chief = MlflowRecorder(spec)
    chief.parent_id = chief.client.create_run(chief.experiment_id,
                                              run_name="sweep").info.run_id
    worker = MlflowRecorder(spec, client=chief.client)
    worker.parent_id, worker.owns_parent = chief.parent_id, False
    return chief, worker


def _trial(worker: MlflowRecorder, trial_id: str) -> str:
    worker.trial_started(trial_id, {"num_blocks": 1},
                         SimpleNamespace(architecture=ARCH, learning_rate=1e-3))
    return worker.children[trial_id]


def test_a_stopped_sweep_closes_the_runs_its_workers_left_open(tmp_path):
    chief, worker = _recorders(tmp_path)
    left_open, closed = _trial(worker, "0"), _trial(worker, "1")
    worker.trial_ended(SimpleNamespace(
        trial_id="1", status="completed", reason=None, stopped_early=None, score=0.5,
        train_seconds=1.0, epochs_run=1, images_per_second=10.0, rss_mb=1.0,
        best_val_accuracy=0.5))

    chief.sweep_failed(KeyboardInterrupt("signal 2"))

    client = chief.client
    run = client.get_run(left_open)
    assert run.info.status == "KILLED"
    assert run.data.tags["cnnsearch.status"] == "killed"
    assert run.data.tags["cnnsearch.reason"] == (
        "sweep stopped: KeyboardInterrupt: signal 2 (its worker did not close the run)")
    assert client.get_run(closed).info.status == "FINISHED"   # a closed run is left as is
    assert client.get_run(chief.parent_id).info.status == "KILLED"


def test_a_worker_stopping_leaves_the_other_workers_runs_open(tmp_path):
    chief, worker = _recorders(tmp_path)
    other = MlflowRecorder(chief.config, client=chief.client)
    other.parent_id, other.owns_parent = chief.parent_id, False
    mine, theirs = _trial(worker, "0"), _trial(other, "1")

    worker.sweep_failed(KeyboardInterrupt("signal 2"))

    assert chief.client.get_run(mine).info.status == "KILLED"
    assert chief.client.get_run(theirs).info.status == "RUNNING"   # still training
    assert chief.client.get_run(chief.parent_id).info.status == "RUNNING"
