"""The MLflow recorder in its own process: events become runs, the sweep waits only where
it must, an unusable store is one line, and a sweep process that dies without a word
still gets its runs closed."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pytest

from cnnsearch.models.architecture import Architecture, Block, Head
from cnnsearch.search.app.console import configure_logging
from cnnsearch.search.errors import SweepStopped
from cnnsearch.search.events import BEST_MODEL_FILE, SweepInfo, SweepResult, TrialOutcome
from cnnsearch.tracking.config import TrackingConfig, TrackingError
from cnnsearch.tracking.recorder_process import RecorderProcess, _message
from cnnsearch.tracking.runs import MlflowRecorder
from tests.tracking.conftest import QUICK, open_experiment

ARCH = Architecture(input_shape=(8, 8, 1), num_classes=10, blocks=(Block(filters=4),),
                    head=Head())


def _spec(root) -> TrackingConfig:
    return TrackingConfig(experiment="digits", registered_model="cnnsearch-digits",
                          root=str(root))


def _info(directory) -> SweepInfo:
    return SweepInfo(name="sweep", directory=str(directory), config={"seed": 0},
                     space_hash="abc", max_trials=1, resumed=False)


def _trial(recorder: RecorderProcess) -> None:
    recorder.trial_started("0", {"num_blocks": 1}, SimpleNamespace(
        architecture=ARCH, learning_rate=1e-3, optimizer="adam"))
    for epoch in range(2):
        recorder.epoch_ended("0", epoch, {"val_accuracy": 0.5 + epoch / 10, "loss": 1.0})


def test_a_sweep_recorded_from_another_process(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / BEST_MODEL_FILE)
    recorder = RecorderProcess(_spec(tmp_path), configure_logging)
    recorder.open()
    recorder.sweep_started(_info(tmp_path))
    _trial(recorder)
    recorder.trial_ended(TrialOutcome("0", "completed", None, 0.6, 0.6, 2, 1.0, 100.0, 500.0))
    recorder.search_ended()
    recorder.sweep_ended(SweepResult(name="sweep", directory=str(tmp_path), best_trial_id="0",
                                     architecture=ARCH.summary(), test_accuracy=0.5), model)
    recorder.close()

    store = open_experiment(tmp_path)
    (parent,), (child,) = store.parents, store.children
    assert parent.info.status == child.info.status == "FINISHED"
    history = store.client.get_metric_history(child.info.run_id, "val_accuracy")
    assert [m.value for m in history] == [0.5, 0.6]
    assert {a.path for a in store.client.list_artifacts(parent.info.run_id)} >= {
        "leaderboard.csv", "plots"}
    (logged,) = store.client.search_logged_models(
        [store.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    files = {a.path for a in store.client.list_logged_model_artifacts(logged.model_id)}
    assert "MLmodel" in files
    # the logged file is the sweep's own: the same bytes, no second save
    saved = mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/data/model.keras")
    assert open(saved, "rb").read() == (tmp_path / BEST_MODEL_FILE).read_bytes()
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype="float32")
    assert np.allclose(keras.saving.load_model(saved).predict(x, verbose=0),
                       model.predict(x, verbose=0))


def test_an_unusable_store_is_one_line_and_writes_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recorder = RecorderProcess(_spec(blocker / "out"), configure_logging)
    with pytest.raises(TrackingError, match="cannot create the MLflow store") as info:
        recorder.open()
    assert "\n" not in str(info.value)
    recorder.close()
    assert blocker.read_text() == "not a folder"


def test_nothing_is_written_before_open(tmp_path):
    recorder = RecorderProcess(_spec(tmp_path / "out"), configure_logging)
    recorder.check()   # the child is up, MLflow imported
    recorder.close()
    assert not (tmp_path / "out").exists()


def test_the_runs_are_closed_when_the_sweep_process_dies_without_a_word(tmp_path):
    recorder = RecorderProcess(_spec(tmp_path), configure_logging)
    recorder.open()
    recorder.sweep_started(_info(tmp_path))
    _trial(recorder)
    recorder._pipe.close()   # as the sweep's process dying does
    recorder._process.join(timeout=60)
    store = open_experiment(tmp_path)
    (parent,), (child,) = store.parents, store.children
    assert parent.info.status == child.info.status == "KILLED"
    assert "ended unexpectedly" in parent.data.tags["cnnsearch.reason"]


@pytest.mark.slow   # a whole sweep in a fresh process: ~15 s
def test_the_sweeps_own_process_never_imports_mlflow(tmp_path):
    code = ("import sys; from cnnsearch.search.app.cli import main; "
            f"code = main(['sweep', *{QUICK!r}, 'paths.root={tmp_path}']); "
            "print('mlflow imported:', 'mlflow' in sys.modules, 'exit', code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow imported: False exit 0" in done.stdout
    (parent,) = open_experiment(tmp_path).parents
    assert parent.info.status == "FINISHED"


def _restarted(recorder: RecorderProcess, pid: int) -> None:
    """Wait until the recorder has replaced its child ``pid`` (the watcher's restart)."""
    deadline = time.monotonic() + 60
    while recorder._process.pid == pid:
        assert time.monotonic() < deadline, "the dead recorder was not restarted"
        time.sleep(0.01)


def _kill(recorder: RecorderProcess) -> int:
    pid = recorder._process.pid
    os.kill(pid, signal.SIGKILL)   # as the OOM killer does
    return pid


def test_a_killed_recorder_is_restarted_and_nothing_is_lost_or_doubled(tmp_path, caplog):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / BEST_MODEL_FILE)
    recorder = RecorderProcess(_spec(tmp_path), configure_logging)
    recorder.open()
    recorder.sweep_started(_info(tmp_path))
    _trial(recorder)   # its run opened, two epochs sent
    _restarted(recorder, _kill(recorder))   # noticed at once, not at the next event
    recorder.epoch_ended("0", 2, {"val_accuracy": 0.7, "loss": 1.0})
    recorder.trial_ended(TrialOutcome("0", "completed", None, 0.7, 0.7, 3, 1.0, 100.0, 500.0))
    _kill(recorder)   # the next wait notices this one
    recorder.search_ended()
    recorder.sweep_ended(SweepResult(name="sweep", directory=str(tmp_path), best_trial_id="0",
                                     architecture=ARCH.summary(), test_accuracy=0.5), model)
    recorder.close()

    assert caplog.text.count("was killed by SIGKILL: restarted") == 2
    store = open_experiment(tmp_path)
    (parent,), (child,) = store.parents, store.children
    assert parent.info.status == child.info.status == "FINISHED"
    history = store.client.get_metric_history(child.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert child.data.metrics["best_val_accuracy"] == 0.7
    (logged,) = store.client.search_logged_models(
        [store.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    assert str(logged.status) == "READY"
    # the runs name the recorder that closed them, so a reader never judges them stale
    assert parent.data.tags["cnnsearch.pid"] == child.data.tags["cnnsearch.pid"] != str(
        os.getpid())


def _die_at_start() -> None:   # the child's logging set-up: a recorder that cannot start
    os._exit(3)


@pytest.mark.slow   # ~17 s: a child started and killed again and again
def test_a_recorder_that_keeps_dying_stops_the_sweep_in_one_line(tmp_path):
    recorder = RecorderProcess(_spec(tmp_path), _die_at_start)
    with pytest.raises(TrackingError) as raised:
        recorder.check()
    assert str(raised.value) == ("the MLflow recorder process died 4 times in a row (last: "
                                 "ended with exit code 3); the sweep stopped, the same "
                                 "command resumes it")
    with pytest.raises(SweepStopped):   # what a trial's event then raises: not its fault
        recorder.epoch_ended("0", 0, {"loss": 1.0})
    recorder.close()


def test_a_restarted_recorder_takes_over_the_open_runs_and_drops_a_half_made_one(
        scratch_client):
    # what the dead recorder (pid 4242) left: the sweep's run and a trial's run it had
    # acknowledged, a trial run it made but never acknowledged, and a run it continued
    # (a resumed sweep's, older than the dead process) that the resent event takes up again
    started = time.time() - 60
    dead = {"cnnsearch.host": socket.gethostname(), "cnnsearch.pid": "4242",
            "cnnsearch.process_start": f"{started:.2f}"}
    experiment = scratch_client.create_experiment("restored")
    make = functools.partial(scratch_client.create_run, experiment)
    older = make(tags=dead, start_time=int(started * 1000) - 5000).info.run_id
    parent = make(tags=dead).info.run_id
    child = make(tags={**dead, "mlflow.parentRunId": parent}).info.run_id
    half_made = make(tags={**dead, "mlflow.parentRunId": parent}).info.run_id
    scratch_client.set_terminated(child, "KILLED")   # as a reader of the store judged it

    recorder = MlflowRecorder(TrackingConfig(experiment="restored"), client=scratch_client)
    recorder.restore({"parent_id": parent, "children": {"0": child}, "owns_parent": True,
                      "objective": "val_accuracy", "sweep_name": "sweep"},
                     [(4242, started)])

    get = scratch_client.get_run
    assert get(parent).info.status == get(child).info.status == "RUNNING"
    assert get(child).data.tags["cnnsearch.pid"] == str(os.getpid())
    assert get(child).data.tags["cnnsearch.status"] == "running"
    assert get(half_made).info.lifecycle_stage == "deleted"
    assert get(older).info.lifecycle_stage == "active"
    assert recorder.state()["children"] == {"0": child}


def test_a_server_that_stops_answering_is_named_in_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with pytest.raises(mlflow.exceptions.MlflowException) as info:
        mlflow.MlflowClient(tracking_uri=uri).get_run("0" * 32)
    assert _message(info.value) == (
        f"MLflow recording failed: the MLflow server at {uri} stopped answering"
        " (Connection refused)")
