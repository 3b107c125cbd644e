"""search.sweep: validation before any work, resume in-process and after SIGKILL."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cnnsearch.search.errors import UserError
from cnnsearch.search.final_fit import epochs_behind
from cnnsearch.search.folder import STATE_FILE, SWEEP_LOCK
from cnnsearch.search.spec import validate
from cnnsearch.search.sweep import run_sweep
from tests.conftest import replace

# -- the final fit's length ----------------------------------------------------------


def _trial(trial_id: str, best_step: int, parent: str | None = None):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    if parent is not None:   # what keras-tuner's Hyperband gives a trial that goes on
        hp.Fixed("tuner/trial_id", parent)
    trial = kt.engine.trial.Trial(hp, trial_id=trial_id)
    trial.best_step = best_step
    return trial


class _Oracle:
    def __init__(self, *trials) -> None:
        self.trials = {trial.trial_id: trial for trial in trials}

    def get_trial(self, trial_id: str):
        return self.trials[trial_id]


def test_final_fit_counts_the_epochs_a_hyperband_trial_inherited():
    # "a" was best at its 2nd epoch; "b" went on from those weights, best at its 3rd epoch
    # of its own; "c" went on from b's best weights and was best at its 1st
    first, second, third = _trial("a", 1), _trial("b", 2, parent="a"), _trial("c", 0, "b")
    oracle = _Oracle(first, second, third)
    assert epochs_behind(oracle, first) == 2
    assert epochs_behind(oracle, second) == 2 + 3
    assert epochs_behind(oracle, third) == 2 + 3 + 1


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "words"), [
    ({"training": {"epochs": 0}}, ["training.epochs", ">= 1"]),
    ({"training": {"batch_size": 0}}, ["training.batch_size"]),
    ({"tuner": {"max_trials": 0}}, ["tuner.max_trials", ">= 1"]),
    ({"tuner": {"name": "hyperband", "factor": 1}}, ["tuner.factor", ">= 2"]),
    ({"tuner": {"name": "grid"}, "space": {"dense_units": [32],
                                           "dropout": {"min": 0.0, "max": 0.5}}},
     ["tuner=grid", "search_space.dropout", "step"]),
    ({"tuner": {"name": "grid"}, "space": {"learning_rate": {"min": 1e-4, "max": 1e-2,
                                                             "sampling": "log"}}},
     ["tuner=grid", "search_space.learning_rate"]),
    ({"space": {"pooling": ["median"]}}, ["search_space.pooling", "median", "max, avg, sum"]),
    ({"space": {"filterz": [8]}}, ["filterz", "allowed"]),
], ids=["epochs=0", "batch_size=0", "max_trials=0", "hyperband-factor=1",
        "grid-unstepped-float", "grid-log-range", "pooling=median", "unknown-key"])
def test_bad_values_are_one_line_user_errors_before_any_work(make_spec, small_space, tmp_path,
                                                             changes, words):
    spec = make_spec({**small_space, **changes.pop("space", {})})
    spec = replace(spec, **changes)
    for attempt in (validate, run_sweep):
        with pytest.raises(UserError) as info:
            attempt(spec)
        message = str(info.value)
        assert "\n" not in message
        for word in words:
            assert word in message
    assert list(tmp_path.iterdir()) == []


def test_grid_accepts_stepped_float_and_integer_ranges(make_spec, small_space):
    space = {**small_space, "dense_units": [32], "dropout": {"min": 0.0, "max": 0.5, "step": 0.25},
             "filters": {"min": 8, "max": 16, "step": 8}}
    validate(make_spec(space, tuner={"name": "grid"}))


# -- naming and resume ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/victim", "../../x", "a/b", "..", ".hidden", "", "x y",
                                  "a" * 129])
def test_a_sweep_name_that_is_not_a_plain_folder_name_is_refused(make_spec, tmp_path, name):
    with pytest.raises(UserError, match="sweep.name must be a plain folder name") as info:
        run_sweep(make_spec(name=name))
    assert repr(name) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resume", [True, False])
def test_a_folder_cnnsearch_did_not_create_is_never_touched(make_spec, tmp_path, resume):
    victim = tmp_path / "sweeps" / "victim"
    victim.mkdir(parents=True)
    (victim / "thesis.tex").write_text("years of work")
    (victim / STATE_FILE).write_text('{"name": "someone else"}')
    with pytest.raises(UserError, match="not a cnnsearch sweep folder"):
        run_sweep(make_spec(name="victim", resume=resume))
    assert sorted(p.name for p in victim.iterdir()) == [STATE_FILE, "thesis.tex"]
    assert (victim / "thesis.tex").read_text() == "years of work"


def test_a_fresh_start_empties_only_its_own_sweep_folder(make_spec, tmp_path):
    spec = make_spec(name="mine", tuner={"max_trials": 1}, final_fit={"enabled": False})
    run_sweep(spec)
    leftover = tmp_path / "sweeps" / "mine" / "old.txt"
    leftover.write_text("from the first run")
    run_sweep(replace(spec, resume=False))
    assert not leftover.exists()
    assert (tmp_path / "sweeps" / "mine" / STATE_FILE).exists()


def test_a_fresh_start_never_empties_a_linked_sweep_folder(make_spec, tmp_path):
    elsewhere = tmp_path / "elsewhere"   # e.g. a bigger disk, outside paths.root
    spec = make_spec(name="mine", root=str(tmp_path / "out"), tuner={"max_trials": 1},
                     final_fit={"enabled": False})
    run_sweep(replace(spec, root=str(elsewhere)))   # a real sweep folder there, then linked
    spec.directory.parent.mkdir(parents=True)
    spec.directory.symlink_to(elsewhere / "sweeps" / "mine")
    before = sorted(p.name for p in spec.directory.iterdir())
    with pytest.raises(UserError, match=r"is a link to .*elsewhere/sweeps/mine; "
                                        r"sweep\.resume=false empties only a folder under "
                                        r"paths\.root, nothing was deleted"):
        run_sweep(replace(spec, resume=False))
    assert sorted(p.name for p in spec.directory.iterdir()) == before
    result, _ = run_sweep(replace(spec, tuner={"max_trials": 2}))   # resuming there is fine
    assert result.n_completed == 2


def test_a_sweep_running_in_another_process_is_refused_untouched(make_spec, tmp_path):
    spec = make_spec(name="mine", tuner={"max_trials": 1}, final_fit={"enabled": False})
    run_sweep(spec)
    before = sorted(p.relative_to(spec.directory) for p in spec.directory.rglob("*"))
    # another process holds the sweep (flock: a second open file conflicts as one would)
    lock = spec.directory / SWEEP_LOCK
    with open(lock, "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write_text("pid 12345 on elsewhere")
        for again in (spec, replace(spec, resume=False)):   # neither resumes nor empties
            with pytest.raises(UserError, match=r"^sweep 'mine' is running in another "
                                                r"process \(pid 12345 on elsewhere\); wait"):
                run_sweep(again)
        assert sorted(p.relative_to(spec.directory)
                      for p in spec.directory.rglob("*")) == before
    result, _ = run_sweep(replace(spec, tuner={"max_trials": 2}))   # free again: resumes
    assert result.n_completed == 2
    assert lock.read_text() == f"pid {os.getpid()} on {socket.gethostname()}"
    result, _ = run_sweep(replace(spec, resume=False))   # a fresh start keeps the lock
    assert result.n_completed == 1 and lock.exists()


def test_a_file_system_without_locks_runs_the_sweep_and_says_so(make_spec, monkeypatch,
                                                                caplog):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    result, _ = run_sweep(make_spec(tuner={"max_trials": 1}, final_fit={"enabled": False}))
    assert result.n_completed == 1
    assert "No locks available): nothing stops a second start of this sweep" in caplog.text


def test_resume_runs_only_the_missing_trials(make_spec, recorder):
    spec = make_spec(tuner={"max_trials": 2}, final_fit={"enabled": False})
    first, _ = run_sweep(spec, [recorder])
    assert first.n_completed == 2
    done = set(recorder.started)
    assert len(done) == 2
    assert recorder.of("sweep_started")[0][0].resumed is False

    recorder.clear()
    more = replace(spec, tuner={"max_trials": 4})
    assert more.directory == spec.directory   # the budget is not part of a sweep's identity
    second, _ = run_sweep(more, [recorder])
    assert recorder.of("sweep_started")[0][0].resumed is True
    assert len(recorder.started) == 2
    assert done.isdisjoint(recorder.started)
    assert second.n_completed == 4
    assert second.directory == first.directory

    recorder.clear()
    fresh, _ = run_sweep(replace(spec, resume=False, tuner={"max_trials": 1}), [recorder])
    assert recorder.of("sweep_started")[0][0].resumed is False
    assert len(recorder.started) == 1
    assert fresh.n_completed == 1   # the four earlier trials are gone
    trial_files = list((spec.directory / "tuner").glob("trial_*/trial.json"))
    assert len(trial_files) == 1


def test_a_changed_space_never_resumes_an_old_sweep(make_spec, small_space):
    spec = make_spec(small_space, tuner={"max_trials": 1}, final_fit={"enabled": False})
    run_sweep(spec)
    state = (spec.directory / STATE_FILE).read_text()
    changed = {**small_space, "filters": [8]}

    # without an explicit name a changed space (or data set) is another sweep
    for other in (replace(spec, search_space=changed),
                  replace(spec, data=replace(spec.data, limit=100))):
        assert other.space_hash != spec.space_hash
        assert other.sweep_name != spec.sweep_name
        assert other.sweep_name.endswith(other.space_hash[:8])
        assert other.directory.parent == spec.directory.parent
        assert not other.directory.exists()
    # ... while the tuner's budget and the training keep the sweep's identity
    same = replace(spec, tuner={"max_trials": 7}, training={"epochs": 3})
    assert same.directory == spec.directory

    # an explicit name that points at the old sweep is refused, not silently mixed
    pinned = replace(spec, search_space=changed, name=spec.sweep_name)
    assert pinned.directory == spec.directory
    with pytest.raises(UserError, match="resume=false") as info:
        run_sweep(pinned)
    assert spec.sweep_name in str(info.value)
    assert "\n" not in str(info.value)
    assert (spec.directory / STATE_FILE).read_text() == state


# -- resume after SIGKILL (real console script) --------------------------------------


def _trial_states(root: Path) -> dict[str, dict]:
    """trial id -> trial.json of every keras-tuner trial under root, readable ones only."""
    states = {}
    for path in root.glob("sweeps/*/tuner/trial_*/trial.json"):
        try:
            states[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):   # being written right now
            continue
    return states


def _completed(root: Path) -> dict[str, Path]:
    return {name: next(root.glob(f"sweeps/*/tuner/{name}/trial.json"))
            for name, state in _trial_states(root).items() if state["status"] == "COMPLETED"}


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_completed_trials(cnnsearch, cli_env, tmp_path):
    root = tmp_path / "out"
    command = [*cnnsearch, "sweep", "search_space=small", "tuner.max_trials=4",
               "training.epochs=3", f"paths.root={root}"]
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=cli_env,
                                   cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            # two trials done and the third one created: the oracle has saved its state
            while not (len(_completed(root)) >= 2 and len(_trial_states(root)) >= 3):
                assert process.poll() is None, (tmp_path / "first.log").read_text()
                assert time.monotonic() < deadline, "the sweep made no progress"
                time.sleep(0.05)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    before = {name: (path.read_bytes(), path.stat().st_mtime_ns)
              for name, path in _completed(root).items()}
    assert 2 <= len(before) < 4

    second = subprocess.run(command, capture_output=True, text=True, env=cli_env, cwd=tmp_path,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming sweep" in second.stderr
    rerun = {f"trial_{n}" for n in re.findall(r"\btrial (\d+): ", second.stderr)}
    assert rerun, second.stderr[-3000:]
    assert rerun.isdisjoint(before)

    after = _completed(root)
    assert len(after) == 4
    assert len(_trial_states(root)) == 4
    for name, (content, mtime) in before.items():
        assert after[name].read_bytes() == content
        assert after[name].stat().st_mtime_ns == mtime
    (result_file,) = root.glob("sweeps/*/result.json")
    result = json.loads(result_file.read_text())
    assert (result["n_completed"], result["n_failed"]) == (4, 0)
    assert (result_file.parent / "best_model.keras").is_file()
