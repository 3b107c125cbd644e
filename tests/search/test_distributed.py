"""Several trials at once (issue 11): a chief and worker processes on one host.

Unit tests of the pieces (thread split, GPU shares, addresses, the config's checks),
and slow tests that run the real console script: 2 workers finish a 6-trial sweep
into one parent run; a worker SIGKILLed mid-trial hands its trial to the other; a
worker with another search space or no chief to talk to fails in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cnnsearch.search.config import DistributedConfig, Role, address
from cnnsearch.search.distributed.workers import check_listen, worker_env
from cnnsearch.search.errors import UserError
from tests.conftest import error_lines
from tests.tracking.conftest import (
    open_experiment,
    run_cli,
    start_cli,
    wait_for_an_epoch,
    wait_for_text,
)

SWEEP = ["sweep", "experiment=quick", "tuner.max_trials=6", "sweep.name=two"]
SHORT = ["training.epochs=3", "data.limit=300"]
WORKER_TRIAL = re.compile(r"\[worker \d+\] .*trial \d+: .*\(lr ")   # its line, relayed


def test_workers_split_the_cpu_threads():
    assert worker_env(0, 2, [], 1, cores=2)["TF_NUM_INTRAOP_THREADS"] == "1"
    assert worker_env(0, 1, [], 1, cores=16)["TF_NUM_INTRAOP_THREADS"] == "16"
    assert worker_env(3, 4, [], 1, cores=16)["OMP_NUM_THREADS"] == "4"
    assert worker_env(0, 8, [], 1, cores=2)["TF_NUM_INTRAOP_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 2, [], 1, cores=2)


@pytest.mark.parametrize("role, workers, trains, processes", [
    (None, 1, False, 0),                       # the one-process sweep
    (None, 2, True, 1), (None, 4, True, 3),    # N trials at once: the chief and N - 1
    (Role.chief, 0, False, 0), (Role.chief, 1, True, 0), (Role.chief, 3, True, 2),
    (Role.worker, 1, False, 1), (Role.worker, 4, False, 4)])   # for a chief elsewhere
def test_workers_counts_the_chief_when_it_trains(role, workers, trains, processes):
    spec = DistributedConfig(role=role, workers=workers, chief="host:1")
    assert (spec.chief_trains, spec.worker_processes) == (trains, processes)


def test_workers_get_a_gpu_or_a_share_of_one():
    gpus = ["0", "1"]
    assert [worker_env(i, 2, gpus, 1, 16)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == gpus
    shared = [worker_env(i, 4, gpus, 2, 16)["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert shared == ["0", "0", "1", "1"]
    env = worker_env(0, 4, gpus, 2, 16)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5001", ("127.0.0.1", 5001)), ("node-3.cluster:80", ("node-3.cluster", 80)),
    ("[::1]:7000", ("::1", 7000))])
def test_addresses_parse(text, expected):
    assert address("distributed.chief", text) == expected


@pytest.mark.parametrize("text", ["myhost", ":5000", "host:", "host:0", "host:70000",
                                  "host:port"])
def test_bad_addresses_name_the_key(text):
    with pytest.raises(UserError, match=r"distributed\.chief must be HOST:PORT"):
        address("distributed.chief", text)


def test_the_config_checks_its_values():
    assert not DistributedConfig().enabled
    assert DistributedConfig(workers=2).enabled and DistributedConfig(role=Role.chief).enabled
    DistributedConfig(role=Role.chief, workers=0).validate()   # workers elsewhere
    for bad, match in [({"workers": 0}, r"distributed\.workers must be >= 1"),
                       ({"role": Role.worker}, r"needs distributed\.chief"),
                       ({"workers_per_gpu": 0}, r"workers_per_gpu must be >= 1"),
                       ({"trial_timeout": -1.0}, r"trial_timeout must be > 0"),
                       ({"connect_timeout": 0.0}, r"connect_timeout must be > 0")]:
        with pytest.raises(UserError, match=match):
            DistributedConfig(**bad).validate()


# -- real processes -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _completed(root: Path, name: str) -> list[str]:
    done = []
    for path in (root / "sweeps" / name / "tuner").glob("trial_*/trial.json"):
        if json.loads(path.read_text())["status"] == "COMPLETED":
            done.append(path.parent.name)
    return done


def _check_one_parent_six_trials(root: Path) -> list:
    """One FINISHED parent; every one of the 6 trials has exactly one FINISHED run."""
    store = open_experiment(root)
    (parent,) = store.parents
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials"] == 6
    children = store.children_of(parent.info.run_id)
    assert len(store.children) == len(children)
    finished = [c.data.tags["cnnsearch.trial_id"] for c in children
                if c.info.status == "FINISHED"]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == 6, finished
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert len(_completed(root, "two")) == 6
    return children


@pytest.mark.slow
def test_two_workers_run_a_sweep_into_one_parent_run(tmp_path):
    done = run_cli(*SWEEP, *SHORT, f"paths.root={tmp_path}", "distributed.workers=2")
    assert done.returncode == 0, done.stderr[-3000:]
    children = _check_one_parent_six_trials(tmp_path)
    trainers = {c.data.tags["cnnsearch.trained_by"] for c in children}
    assert len(trainers) == 2, "the chief and its one worker process both trained trials"
    assert len({c.data.tags["cnnsearch.pid"] for c in children}) == 1, "one recorder"
    assert "[worker 1]" in done.stderr and "[worker 2]" not in done.stderr
    assert "final fit" in done.stderr and "test accuracy" in done.stdout
    assert not _alive_with(str(tmp_path)), "a worker outlived the sweep"


@contextlib.contextmanager
def _chief_in_a_trial(tmp_path: Path,
                      *args: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A 2-worker sweep (the chief and one worker process) in the background, once the
    worker started a trial; SIGKILLed at the end if still running."""
    stderr = tmp_path / "chief.err"
    chief = start_cli(*SWEEP, f"paths.root={tmp_path}", "distributed.workers=2",
                      "data.limit=1000", *args, stderr_path=stderr)
    try:
        wait_for_text(stderr, WORKER_TRIAL, chief, timeout=180)
        yield chief, stderr
    finally:
        if chief.poll() is None:
            os.killpg(chief.pid, signal.SIGKILL)


def _first_trial(stderr: Path) -> tuple[int, str]:
    """The worker number and trial id of the first trial a worker process started."""
    first = next(line for line in stderr.read_text().splitlines()
                 if WORKER_TRIAL.search(line))
    return int(first.split("[worker ")[1].split("]")[0]), first.split("trial ")[1].split(":")[0]


def _local_worker(chief: subprocess.Popen, index: int) -> psutil.Process:
    """The chief's worker process ``worker <index>`` (numbered in start order)."""
    workers = sorted((p for p in psutil.Process(chief.pid).children()
                      if "distributed.role=worker" in " ".join(p.cmdline())),
                     key=lambda p: (p.create_time(), p.pid))
    return workers[index - 1]


def _alive_with(text: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if text in " ".join(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_hands_its_trial_to_the_other(tmp_path):
    with _chief_in_a_trial(tmp_path, "training.epochs=8") as (chief, stderr):
        index, trial_id = _first_trial(stderr)
        wait_for_an_epoch(tmp_path, chief, trial_id)   # inside the trial's fit
        _local_worker(chief, index).send_signal(signal.SIGKILL)
        assert chief.wait(timeout=600) == 0, stderr.read_text()[-3000:]
    text = stderr.read_text()
    assert "handed to another worker" in text, text[-3000:]
    children = _check_one_parent_six_trials(tmp_path)
    (killed,) = [c for c in children if c.info.status == "KILLED"]
    assert killed.data.tags["cnnsearch.status"] == "killed"
    assert killed.data.tags["cnnsearch.reason"].startswith("worker lost")
    assert not _alive_with(str(tmp_path)), "a worker outlived the sweep"


@pytest.mark.slow
def test_a_worker_without_a_chief_fails_in_one_line(tmp_path):
    port = _free_port()
    done = run_cli(*SWEEP, *SHORT, f"paths.root={tmp_path}", "distributed.role=worker",
                   f"distributed.chief=127.0.0.1:{port}", "distributed.connect_timeout=2")
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)[-1:]
    assert f"no cnnsearch chief answered at distributed.chief=127.0.0.1:{port}" in line
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("workers", [0, 2])
def test_a_port_in_use_fails_in_one_line_before_anything_is_written(tmp_path, workers):
    with socket.socket() as taken:   # e.g. this chief's command, already running
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(*SWEEP, *SHORT, f"paths.root={tmp_path}", "distributed.role=chief",
                       f"distributed.bind=127.0.0.1:{port}", f"distributed.workers={workers}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert error_lines(done.stderr) == [f"cnnsearch: error: distributed.bind=127.0.0.1:{port}: "
                                        "the chief cannot listen there (port in use, or not "
                                        "an address of this host)"]
    assert "[worker" not in done.stderr and not any(tmp_path.iterdir())   # no store, no sweep


def test_a_free_port_or_any_port_passes_the_listen_check():
    check_listen(DistributedConfig(role=Role.chief, bind=f"127.0.0.1:{_free_port()}"))
    check_listen(DistributedConfig(role=Role.chief, bind="127.0.0.1:0"))
    with pytest.raises(UserError, match=r"^distributed\.bind=192\.0\.2\.1:\d+: the chief "
                                        r"cannot listen there"):   # not this host's address
        check_listen(DistributedConfig(role=Role.chief, bind=f"192.0.2.1:{_free_port()}"))


@pytest.mark.slow
def test_the_same_sweep_started_twice_leaves_the_running_one_alone(tmp_path):
    # a requeued job, or the command run again in another terminal, while the sweep runs
    args = ["training.epochs=300", "training.early_stopping_patience=null"]   # minutes
    with _chief_in_a_trial(tmp_path, *args) as (chief, stderr):
        again = run_cli(*SWEEP, f"paths.root={tmp_path}", "distributed.workers=2",
                        "data.limit=1000", *args)
        assert chief.poll() is None, "the first sweep ended before the second started"
        assert again.returncode == 2, again.stderr[-3000:]
        assert error_lines(again.stderr)[-1] == (
            f"cnnsearch: error: sweep 'two' is running in another process (pid {chief.pid} "
            f"on {socket.gethostname()}); wait for it to end, or give this one another "
            "sweep.name")
        assert "Traceback" not in again.stderr
        store = open_experiment(tmp_path)   # the running sweep's records, untouched
        (parent,) = store.parents
        assert parent.info.status == "RUNNING"
        runs = store.children_of(parent.info.run_id)
        assert runs and {r.info.status for r in runs} <= {"RUNNING", "FINISHED"}
        os.killpg(chief.pid, signal.SIGINT)   # and it still stops as it should
        assert chief.wait(timeout=120) == 130, stderr.read_text()[-3000:]
    assert not _alive_with(str(tmp_path)), "a worker outlived its sweep"


@pytest.mark.slow
def test_a_chief_and_a_worker_started_apart_and_a_worker_of_another_space(tmp_path):
    # what two machines run (README, "Scaling out"), here on one host's loopback
    port = _free_port()
    stderr = tmp_path / "chief.err"
    role = [*SWEEP, *SHORT, f"paths.root={tmp_path}"]
    chief = start_cli(*role, "distributed.role=chief", f"distributed.bind=127.0.0.1:{port}",
                      "distributed.workers=0", stderr_path=stderr)
    try:
        wait_for_text(stderr, "chief serving trials", chief, timeout=120)
        other = run_cli(*role, "distributed.role=worker", f"distributed.chief=127.0.0.1:{port}",
                        "search_space.filters=[8]")
        assert other.returncode == 2, other.stderr[-3000:]
        assert "search space differs from the chief's" in error_lines(other.stderr)[-1]
        assert not _completed(tmp_path, "two"), "the odd worker trained nothing"

        worker = run_cli(*role, "distributed.role=worker", f"distributed.chief=127.0.0.1:{port}")
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert chief.wait(timeout=300) == 0, stderr.read_text()[-3000:]
    finally:
        if chief.poll() is None:
            os.killpg(chief.pid, signal.SIGKILL)
    _check_one_parent_six_trials(tmp_path)


@pytest.mark.slow
def test_ctrl_c_stops_the_chief_and_its_workers_and_closes_every_run(tmp_path):
    with _chief_in_a_trial(tmp_path, "training.epochs=30") as (chief, stderr):
        wait_for_an_epoch(tmp_path, chief)   # a trial's fit is under way
        os.killpg(chief.pid, signal.SIGINT)   # what Ctrl-C in its terminal sends
        assert chief.wait(timeout=120) == 130, stderr.read_text()[-3000:]
    store = open_experiment(tmp_path)
    (parent,) = store.parents
    assert parent.info.status == "KILLED"
    runs = store.children_of(parent.info.run_id)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert not _alive_with(str(tmp_path)), "a worker outlived the chief"


@pytest.mark.slow
def test_a_worker_that_does_not_stop_is_killed_and_its_run_closed_by_the_chief(tmp_path):
    with _chief_in_a_trial(tmp_path, "training.epochs=30") as (chief, stderr):
        index, trial_id = _first_trial(stderr)
        wait_for_an_epoch(tmp_path, chief, trial_id)   # its run is open, it trains
        stuck = _local_worker(chief, index)   # frozen, as in a native call: it cannot
        stuck.send_signal(signal.SIGSTOP)      # close its run
        os.killpg(chief.pid, signal.SIGINT)
        assert chief.wait(timeout=120) == 130, stderr.read_text()[-3000:]
    killed = f"worker {index} (pid {stuck.pid}) did not stop within 30 s: killed"
    assert killed in stderr.read_text()
    store = open_experiment(tmp_path)
    (parent,) = store.parents
    runs = store.children_of(parent.info.run_id)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (run,) = [r for r in runs if r.data.tags["cnnsearch.trial_id"] == trial_id]
    assert run.info.status == "KILLED"   # closed by the chief's recorder, which holds it
    assert run.data.tags["cnnsearch.reason"].startswith("sweep stopped")


@pytest.mark.slow
def test_a_killed_chief_takes_its_workers_along_and_the_same_command_resumes(tmp_path):
    args = [*SWEEP, f"paths.root={tmp_path}", "distributed.workers=2", "training.epochs=8",
            "data.limit=1000"]
    stderr = tmp_path / "chief.err"
    chief = start_cli(*args, stderr_path=stderr)
    try:
        wait_for_text(stderr, "trial 0: score", chief, timeout=180)
        workers = psutil.Process(chief.pid).children()
        chief.send_signal(signal.SIGKILL)   # the chief alone, as the OOM killer would
        chief.wait()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, "a worker outlived its chief"
    finally:
        if chief.poll() is None:
            os.killpg(chief.pid, signal.SIGKILL)
    done_before = set(_completed(tmp_path, "two"))

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming sweep" in again.stderr
    assert done_before <= set(_completed(tmp_path, "two"))
    _check_one_parent_six_trials(tmp_path)
