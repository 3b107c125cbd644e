"""search.tuners through real tiny sweeps: feasibility filter, budget, failure policy, tuners."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math

import keras
import keras_tuner as kt
import numpy as np
import pytest

from cnnsearch.search.data.datasets import load_dataset
from cnnsearch.search.errors import SweepStopped, UserError, disk_full
from cnnsearch.search.events import BEST_MODEL_FILE
from cnnsearch.search.folder import STATE_FILE
from cnnsearch.search.kt.hypermodel import CNNHyperModel
from cnnsearch.search.kt.internals import BestEpochInMemory
from cnnsearch.search.sweep import run_sweep
from tests.conftest import Recorder

# On 8x8 digits with `valid` padding only 1-block candidates fit (every 2- and 3-block
# one shrinks a map below its window); the orders put infeasible ones first for the grid.
MOSTLY_INFEASIBLE = dict(num_blocks=[3, 2, 1], padding=["valid"], kernel_size=[5, 3],
                         pooling=["max"], strides=[2, 1], filters=[8], dense_units=[0])
# Block 1 leaves a 1x1 map (8 -> 7x7 conv -> 2 -> pool -> 1): no 7x7 window fits block 2.
NOTHING_FITS = dict(num_blocks=[2, 3], padding=["valid"], kernel_size=[7], strides=[1],
                    pooling=["max", "avg"], filters=[8], dense_units=[0])


@pytest.fixture
def recording() -> type[CNNHyperModel]:
    """A hypermodel class that keeps every architecture it is asked to build (``built``)."""

    class RecordingHyperModel(CNNHyperModel):
        built: list = []

        def build(self, hp):
            self.built.append(self.candidate(hp).architecture)
            return super().build(hp)

    return RecordingHyperModel


def failing(fails) -> type[CNNHyperModel]:
    """A hypermodel class whose build raises for the architectures ``fails(arch)`` selects."""

    class FailingHyperModel(CNNHyperModel):
        def build(self, hp):
            arch = self.candidate(hp).architecture
            if fails(arch):
                raise RuntimeError(f"injected build failure ({arch.blocks[0].filters} filters)")
            return super().build(hp)

    return FailingHyperModel


# -- feasibility filter ----------------------------------------------------------------


@pytest.mark.parametrize("tuner", ["random", pytest.param("grid", marks=pytest.mark.slow)])
def test_infeasible_candidates_are_skipped_not_trained(make_spec, small_space, recording,
                                                      recorder, tuner):
    space = {**small_space, **MOSTLY_INFEASIBLE}
    spec = make_spec(space, tuner={"name": tuner, "max_trials": 3}, final_fit={"enabled": False})
    result, _ = run_sweep(spec, [recorder], hypermodel_class=recording)

    built = recording.built
    assert built, "no candidate was built"
    assert [arch.infeasibility() for arch in built] == [None] * len(built)
    started = [candidate.architecture for _, _, candidate in recorder.of("trial_started")]
    assert [arch.infeasibility() for arch in started] == [None] * 3
    assert all(len(arch.blocks) == 1 for arch in started)
    # skipped candidates were counted, reported and did not use up the trials
    assert result.n_skipped > 0
    assert result.n_completed == 3
    assert result.n_failed == 0
    skipped = recorder.of("candidate_skipped")
    assert len(skipped) == result.n_skipped
    assert all(" on a " in reason for reason, _ in skipped)
    assert sum(result.skip_reasons.values()) == result.n_skipped


@pytest.mark.parametrize("tuner", ["random", "grid"])
def test_a_space_without_a_feasible_candidate_is_a_user_error(make_spec, small_space, recording,
                                                             recorder, tuner):
    spec = make_spec({**small_space, **NOTHING_FITS}, tuner={"name": tuner})
    with pytest.raises(UserError, match="no feasible candidate") as info:
        run_sweep(spec, [recorder], hypermodel_class=recording)
    assert "8x8x1" in str(info.value)
    assert "\n" not in str(info.value)
    assert recording.built == []
    assert recorder.of("trial_started") == []
    assert recorder.of("candidate_skipped")
    assert isinstance(recorder.of("sweep_failed")[0][0], UserError)


def test_candidates_over_the_parameter_budget_are_skipped(make_spec, small_space, recording,
                                                          recorder):
    # Of the small space's 84 candidates only the 9 with two 8-filter blocks and no dense
    # layer have fewer than 1,000 parameters (994); the smallest 1-block one has 1,370.
    budget = 1000
    spec = make_spec({**small_space, "max_params": budget}, final_fit={"enabled": False},
                     tuner={"max_trials": 1})
    result, _ = run_sweep(spec, [recorder], hypermodel_class=recording)

    assert result.n_completed == 1
    assert recording.built   # the trial, then the reload of the best model
    assert all(arch.params <= budget for arch in recording.built)
    assert result.params <= budget
    assert result.n_skipped > 0
    assert all("max_params" in reason for reason in result.skip_reasons)
    assert all("max_params" in reason for reason, _ in recorder.of("candidate_skipped"))


# -- failure policy ------------------------------------------------------------------


def test_failed_builds_and_nan_losses_fail_their_trials_only(make_spec, small_space, recorder):
    # The grid runs exactly these four: 8 filters (build fails) x lr 0.003 / 1e30,
    # then 16 filters x lr 0.003 (trains) / 1e30 (SGD overflows: the loss becomes NaN).
    hypermodel_class = failing(lambda arch: arch.blocks[0].filters == 8)
    space = {**small_space, "num_blocks": [1], "filters": [8, 16], "pooling": ["max"],
             "dense_units": [0], "learning_rate": [0.003, 1e30], "optimizer": ["sgd"]}
    spec = make_spec(space, tuner={"name": "grid", "max_trials": 4}, final_fit={"enabled": False})
    result, _ = run_sweep(spec, [recorder], hypermodel_class=hypermodel_class)

    assert (result.n_completed, result.n_failed, result.n_skipped) == (1, 3, 0)
    assert result.stopped_reason is None
    assert result.test_accuracy is not None
    outcomes = {outcome.trial_id: outcome for outcome in recorder.outcomes}
    values = {trial_id: v for trial_id, v, _ in recorder.of("trial_started")}
    assert len(outcomes) == 4
    for trial_id, outcome in outcomes.items():
        filters, lr = values[trial_id]["block1_filters"], values[trial_id]["learning_rate"]
        if filters == 8:
            assert outcome.status == "failed"
            assert "injected build failure (8 filters)" in outcome.reason
            assert "\n" not in outcome.reason
            assert outcome.score is None
        elif lr > 1:
            assert outcome.status == "failed"
            assert "NaN" in outcome.reason
        else:
            assert outcome.status == "completed"
            assert outcome.reason is None
            assert math.isfinite(outcome.score)
    assert result.best_values["block1_filters"] == 16
    assert result.best_values["learning_rate"] == 0.003


def test_a_full_disk_stops_the_search_instead_of_failing_trials(make_spec, small_space,
                                                                monkeypatch, recorder):
    # keras-tuner counts any error of a trial as the trial's failure and goes on; a full
    # disk breaks every trial alike, so the sweep must stop at once, its trial unfailed.
    class FullDisk(CNNHyperModel):
        def fit(self, hp, model, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/ckpt.weights.h5")

    spec = make_spec(small_space, final_fit={"enabled": False})
    with pytest.raises(kt.errors.FatalError) as raised:
        run_sweep(spec, [recorder], hypermodel_class=FullDisk)

    assert disk_full(raised.value) == (
        "no space left on device (writing /data/ckpt.weights.h5): free some space, then run "
        "the same command again (a sweep resumes where it stopped)")
    assert len(recorder.started) == 1 and recorder.outcomes == []
    assert recorder.of("sweep_failed") == [[raised.value]]


def test_an_observer_that_cannot_go_on_stops_the_sweep_and_hands_its_trial_back(
        make_spec, small_space, recorder):
    # the MLflow recorder lost for good (tracking.recorder_process.RecorderLost) is not
    # the candidate's fault: the sweep stops with that error, its trial still to run
    class LostAtFirstEpoch:
        def epoch_ended(self, trial_id, epoch, logs):
            raise SweepStopped("the MLflow recorder process died 4 times in a row")

    spec = make_spec(small_space, final_fit={"enabled": False})
    with pytest.raises(SweepStopped, match="died 4 times in a row") as raised:
        run_sweep(spec, [recorder, LostAtFirstEpoch()])
    assert recorder.outcomes == [] and recorder.of("sweep_failed") == [[raised.value]]
    (trial,) = [json.loads(path.read_text())
                for path in (spec.directory / "tuner").glob("trial_*/trial.json")]
    assert trial["status"] == "RUNNING"

    resumed = Recorder()
    result, _ = run_sweep(spec, [resumed])   # the same command: the trial runs again
    assert result.n_completed == 2 and result.n_failed == 0
    assert resumed.started[0] == trial["trial_id"]


@pytest.mark.parametrize("labels", ["shuffled", "real"])
def test_labels_no_model_can_learn_end_with_a_warning(make_spec, small_space, caplog, labels):
    # Shuffled, the labels no longer belong to the images: every trial completes near
    # chance and the sweep says so; the same sweep on the real labels does not.
    spec = make_spec(small_space, tuner={"max_trials": 1}, training={"epochs": 10},
                     final_fit={"enabled": False})
    data = load_dataset(spec.data, spec.seed)
    if labels == "shuffled":
        rng = np.random.default_rng(0)
        data = dataclasses.replace(data, y_train=rng.permutation(data.y_train),
                                   y_val=rng.permutation(data.y_val))
    with caplog.at_level(logging.WARNING, logger="cnnsearch.search.final_fit"):
        result, _ = run_sweep(spec, [], data=data)

    assert result.n_completed == 1
    warnings = [r.getMessage() for r in caplog.records if "commonest class" in r.getMessage()]
    assert len(warnings) == (labels == "shuffled"), (result.best_val_accuracy, warnings)


def test_trials_keep_keras_asynchronous_batch_dispatch(make_spec, small_space, monkeypatch):
    # A callback with per-batch hooks makes Keras wait for every batch where the backend
    # dispatches asynchronously (JAX, torch); the trial's callbacks (keras-tuner's, early
    # stopping, ours) must not have any. TensorFlow never dispatches asynchronously, so
    # the check asks what Keras would decide on a thread-safe backend.
    dispatch = []
    fit = keras.Model.fit

    def recording_fit(model, *args, callbacks=None, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(keras.src.backend, "IS_THREAD_SAFE", True)
            dispatch.append(keras.callbacks.CallbackList(callbacks, model=model)._async_train)
        return fit(model, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    spec = make_spec(small_space, training={"early_stopping_patience": 2},
                     final_fit={"enabled": False})
    result, _ = run_sweep(spec, [])

    assert result.n_completed == 2
    assert dispatch == [True, True]


def test_the_best_epoch_checkpoint_is_written_once_with_the_best_weights(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "checkpoint.weights.h5"
    checkpoint = BestEpochInMemory(kt.Objective("val_accuracy", "max"),
                                                  str(path))
    checkpoint.set_model(model)
    best = model.get_weights()
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.9})
    model.set_weights([w + 1 for w in best])
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.5})
    assert not path.exists()

    checkpoint.on_train_end()

    last = model.get_weights()
    assert all((a == b + 1).all() for a, b in zip(last, best, strict=True))  # untouched
    model.load_weights(path)
    assert all((a == b).all() for a, b in zip(model.get_weights(), best, strict=True))


def test_trials_leave_no_graph_behind_in_tensorflows_gradient_registry(make_spec, small_space):
    # Keras' TF optimizer registers a custom gradient per traced train step and TF never
    # drops it, which kept every trial's graph alive (~10 MB a trial).
    ops = pytest.importorskip("tensorflow.python.framework.ops")

    def custom_gradients() -> set[str]:
        return {name for name in ops._gradient_registry._registry
                if name.startswith("CustomGradient-")}

    before = custom_gradients()
    spec = make_spec(small_space, tuner={"max_trials": 3}, final_fit={"enabled": False})
    result, _ = run_sweep(spec, [])

    assert result.n_completed == 3
    assert custom_gradients() == before


def test_consecutive_failures_stop_the_sweep_with_the_last_reason(make_spec, small_space,
                                                                  recorder):
    spec = make_spec(small_space, tuner={"max_trials": 5, "max_consecutive_failed_trials": 2})
    with pytest.raises(UserError) as info:
        run_sweep(spec, [recorder], hypermodel_class=failing(lambda arch: True))
    message = str(info.value)
    assert "consecutive failures" in message
    assert "limit of 2" in message
    assert "RuntimeError: injected build failure" in message
    assert "\n" not in message
    assert [outcome.status for outcome in recorder.outcomes] == ["failed", "failed"]
    assert isinstance(recorder.of("sweep_failed")[0][0], UserError)


# -- every tuner ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [   # random is the fast one; ~50 s for all four
    "random", *(pytest.param(name, marks=pytest.mark.slow)
                for name in ("grid", "bayesian", "hyperband"))])
def test_each_tuner_runs_a_tiny_sweep(make_spec, small_space, recorder, name):
    knobs = {"max_epochs": 2, "factor": 2} if name == "hyperband" else {"max_trials": 2}
    spec = make_spec(small_space, tuner={"name": name, **knobs})
    result, model = run_sweep(spec, [recorder])

    assert result.test_accuracy is not None and 0 <= result.test_accuracy <= 1
    assert result.best_val_accuracy is not None
    assert result.n_failed == 0
    assert result.n_completed == len(recorder.started) >= 2
    if name != "hyperband":
        assert result.n_completed == 2
    directory = spec.directory
    assert result.directory == str(directory)
    assert (directory / BEST_MODEL_FILE).is_file()
    state = json.loads((directory / STATE_FILE).read_text())
    assert state["space_hash"] == spec.space_hash
    assert model.count_params() == result.params
    assert recorder.events[0][0] == "sweep_started"
    assert recorder.events[-1][0] == "sweep_ended"


# -- observer events -----------------------------------------------------------------


def test_observers_see_every_trial_and_epoch(make_spec, small_space, recorder):
    # grid over num_blocks only: exactly a 2-block and then a 1-block candidate
    space = {**small_space, "num_blocks": [2, 1], "filters": [8], "pooling": ["max"],
             "dense_units": [0]}
    spec = make_spec(space, tuner={"name": "grid", "max_trials": 5},
                     training={"epochs": 2}, final_fit={"enabled": False})
    result, _ = run_sweep(spec, [recorder])

    kinds = [event for event, *_ in recorder.events]
    assert kinds == ["sweep_started",
                     "trial_started", "epoch_ended", "epoch_ended", "trial_ended",
                     "trial_started", "epoch_ended", "epoch_ended", "trial_ended",
                     "search_ended", "sweep_ended"]
    info = recorder.of("sweep_started")[0][0]
    assert (info.name, info.max_trials, info.resumed) == (spec.sweep_name, 5, False)
    assert result.n_completed == 2

    started = recorder.of("trial_started")
    assert [values["num_blocks"] for _, values, _ in started] == [2, 1]
    for trial_id, values, candidate in started:
        blocks = values["num_blocks"]
        assert len(candidate.architecture.blocks) == blocks
        for b in (1, 2, 3):
            keys = [key for key in values if key.startswith(f"block{b}_")]
            assert bool(keys) == (b <= blocks), (trial_id, b, keys)
    two_block, one_block = (values for _, values, _ in started)
    assert "block2_filters" in two_block
    assert not [key for key in one_block if key.startswith("block2_")]

    for trial_id, _, _ in started:
        epochs = [(epoch, logs) for tid, epoch, logs in recorder.of("epoch_ended")
                  if tid == trial_id]
        assert [epoch for epoch, _ in epochs] == [0, 1]
        assert all({"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs)
                   for _, logs in epochs)
    for outcome in recorder.outcomes:
        assert outcome.status == "completed"
        assert outcome.epochs_run == 2
        assert outcome.train_seconds > 0
        assert outcome.images_per_second > 0
        epoch_scores = [logs["val_accuracy"] for tid, _, logs in recorder.of("epoch_ended")
                        if tid == outcome.trial_id]
        assert outcome.score == pytest.approx(max(epoch_scores))
