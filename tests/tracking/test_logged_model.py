"""The sweep's final model is an MLflow logged model: the newest complete one is the
winner, and one a killed process left half-logged is marked FAILED."""

from __future__ import annotations

import time
from types import SimpleNamespace

import keras
import pytest
from mlflow.entities import LoggedModelStatus

from cnnsearch.tracking.config import TrackingConfig
from cnnsearch.tracking.runs import MlflowRecorder
from cnnsearch.tracking.store import TrackingError
from cnnsearch.tracking.winner import sweep_model_uri


@pytest.fixture
def recorder(tmp_path) -> MlflowRecorder:
    spec = TrackingConfig(experiment="digits", registered_model="cnnsearch-digits",
                          root=str(tmp_path))
    recorder = MlflowRecorder(spec)
    recorder.parent_id = recorder.client.create_run(recorder.experiment_id,
                                                    run_name="sweep").info.run_id
    return recorder


def _model(recorder, status: LoggedModelStatus):
    time.sleep(0.01)   # creation times in ms: keep them apart
    model = recorder.client.create_logged_model(recorder.experiment_id, name="model",
                                                source_run_id=recorder.parent_id)
    if status != LoggedModelStatus.PENDING:
        recorder.client.finalize_logged_model(model.model_id, status)
    return model


def test_the_newest_complete_model_is_the_winner(recorder):
    sweep = recorder.client.get_run(recorder.parent_id)
    with pytest.raises(TrackingError, match="has no final model"):
        sweep_model_uri(recorder.client, sweep)
    _model(recorder, LoggedModelStatus.READY)
    newest = _model(recorder, LoggedModelStatus.READY)
    _model(recorder, LoggedModelStatus.PENDING)
    _model(recorder, LoggedModelStatus.FAILED)
    assert sweep_model_uri(recorder.client, sweep) == f"models:/{newest.model_id}"


def test_a_half_logged_model_is_marked_failed_when_the_model_is_logged_again(recorder):
    half = _model(recorder, LoggedModelStatus.PENDING)
    network = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(3, activation="softmax")])
    recorder._log_model(network, SimpleNamespace(name="sweep", test_accuracy=0.5,
                                                 architecture="4x4x1 | flatten | 3"))
    models = recorder.client.search_logged_models(
        [recorder.experiment_id], filter_string=f"source_run_id = '{recorder.parent_id}'")
    status = {model.model_id: model.status for model in models}
    assert status.pop(half.model_id) == LoggedModelStatus.FAILED
    assert list(status.values()) == [LoggedModelStatus.READY]
    sweep = recorder.client.get_run(recorder.parent_id)
    (version,) = recorder.client.search_model_versions("name = 'cnnsearch-digits'")
    assert version.source == sweep_model_uri(recorder.client, sweep)
    assert version.tags == {"test_accuracy": "0.5000", "architecture": "4x4x1 | flatten | 3",
                            "cnnsearch.sweep": "sweep"}
