"""search.kt.internals: the one module on keras-tuner's private API refuses untested versions
and repairs what a kill between its two state writes leaves."""

from __future__ import annotations

import json
from pathlib import Path

import keras_tuner as kt
import pytest

from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.internals import (
    TESTED_VERSIONS,
    check_version,
    repair_after_reload,
)
from cnnsearch.search.sweep import run_sweep


def test_the_installed_keras_tuner_is_a_tested_one():
    assert kt.__version__ in TESTED_VERSIONS
    check_version()


def test_an_untested_keras_tuner_is_refused_before_any_work(monkeypatch, make_spec, tmp_path):
    monkeypatch.setattr(kt, "__version__", "9.0.0")
    with pytest.raises(UserError) as info:
        run_sweep(make_spec())
    message = str(info.value)
    assert "keras-tuner 9.0.0 is not supported" in message
    assert f"pip install 'keras-tuner=={TESTED_VERSIONS[-1]}'" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def _oracle(project: Path) -> kt.Oracle:
    hps = kt.HyperParameters()
    hps.Int("units", 1, 100)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"),
                                           max_trials=3, hyperparameters=hps, seed=0)
    oracle._set_project_dir(str(project), "tuner")
    if (project / "tuner" / "oracle.json").exists():
        oracle.reload()
    return oracle


def _end(oracle: kt.Oracle, trial) -> None:
    oracle.update_trial(trial.trial_id, {"score": 1.0})
    trial.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(trial)


def _killed_between_the_two_writes(tmp_path: Path, step) -> kt.Oracle:
    """A project whose oracle.json is as before ``step`` and its trial files as after it
    (keras-tuner writes the trial's file first): a kill in between. Reloaded."""
    oracle = _oracle(tmp_path)
    _end(oracle, oracle.create_trial("tuner0"))
    state = tmp_path / "tuner" / "oracle.json"
    before = state.read_bytes()
    step(oracle)
    state.write_bytes(before)
    return _oracle(tmp_path)


def test_a_trial_killed_as_it_was_created_runs_after_the_reload(tmp_path):
    oracle = _killed_between_the_two_writes(tmp_path, lambda o: o.create_trial("tuner0"))
    assert oracle.trials["1"].status == "RUNNING" and "1" not in oracle._retry_queue
    repair_after_reload(oracle)
    assert oracle._retry_queue == ["1"]   # not trial 0: ended, though saved as ongoing
    trial = oracle.create_trial("tuner0")
    assert trial.trial_id == "1"
    _end(oracle, trial)
    _end(oracle, oracle.create_trial("tuner0"))   # trial 2: max_trials=3 are all run
    assert [t.status for t in oracle.trials.values()] == ["COMPLETED"] * 3


def test_a_trial_killed_as_it_ended_does_not_run_again(tmp_path):
    oracle = _oracle(tmp_path)
    _end(oracle, oracle.create_trial("tuner0"))
    trial = oracle.create_trial("tuner0")   # saved as ongoing in oracle.json
    state = tmp_path / "tuner" / "oracle.json"
    running = state.read_bytes()
    _end(oracle, trial)
    state.write_bytes(running)   # killed after trial.json said COMPLETED
    oracle = _oracle(tmp_path)
    assert oracle._retry_queue == ["1"]
    repair_after_reload(oracle)
    assert oracle._retry_queue == []
    assert oracle.create_trial("tuner0").trial_id == "2"


def test_keras_tuners_state_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    # a kill between truncating trial.json and writing it left an empty file, and the
    # next start failed to reload the trial (tests/reliability/test_kill_anywhere.py,
    # "between trials", seen once in CI)
    from keras_tuner.src import utils as kt_utils

    path = tmp_path / "trial.json"
    kt_utils.save_json(str(path), {"trial_id": "0", "status": "RUNNING"})

    def killed(*_):   # the process dies before the new file is in place
        raise OSError("killed")

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(OSError, match="killed"):
        kt_utils.save_json(str(path), {"trial_id": "0", "status": "COMPLETED"})
    assert json.loads(path.read_text())["status"] == "RUNNING"   # the previous state, whole
    monkeypatch.undo()
    kt_utils.save_json(str(path), {"trial_id": "0", "status": "COMPLETED"})
    assert json.loads(path.read_text())["status"] == "COMPLETED"
    assert [p.name for p in tmp_path.iterdir()] == ["trial.json"]   # no side file left
