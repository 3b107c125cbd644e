"""tracking.store: where runs go, bad stores as one-line errors, stale-run reconciliation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from cnnsearch.tracking.config import TrackingConfig, redact
from cnnsearch.tracking.store import (
    TrackingError,
    experiment_id,
    open_store,
    process_tags,
    reconcile_stale_runs,
)
from tests.conftest import error_lines
from tests.tracking.conftest import QUICK, new_experiment

# -- reconcile_stale_runs ----------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()   # reaped: no zombie left behind
    return child.pid


def _run(client, experiment_id: str, host: str, pid: int, trial: bool = True,
         started: str | None = None) -> str:
    tags = {"cnnsearch.role": "trial" if trial else "sweep", "cnnsearch.host": host,
            "cnnsearch.pid": str(pid)}
    if started is not None:
        tags["cnnsearch.process_start"] = started
    if trial:
        tags["cnnsearch.status"] = "running"
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_a_zombie_process_counts_as_gone(scratch_client):
    """Killed but not yet reaped by its parent: its run is stale all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:   # exited, unreaped
            assert time.monotonic() < deadline
            time.sleep(0.05)
        experiment_id = new_experiment(scratch_client)
        run = _run(scratch_client, experiment_id, socket.gethostname(), child.pid,
                   started=process_tags_of(child.pid))
        assert reconcile_stale_runs(scratch_client, [experiment_id]) == 1
        assert scratch_client.get_run(run).info.status == "KILLED"
    finally:
        child.wait()


def test_reconcile_kills_only_this_hosts_runs_whose_process_is_gone(scratch_client):
    client = scratch_client
    experiment_id = new_experiment(client)
    host, dead = socket.gethostname(), _dead_pid()
    stale_trial = _run(client, experiment_id, host, dead)
    stale_sweep = _run(client, experiment_id, host, dead, trial=False)
    alive = _run(client, experiment_id, host, os.getppid())
    alive_same_start = _run(client, experiment_id, host, os.getppid(),
                            started=process_tags_of(os.getppid()))
    reused_pid = _run(client, experiment_id, host, os.getppid(), started="12345.00")
    mine = _run(client, experiment_id, host, os.getpid())
    elsewhere = _run(client, experiment_id, f"not-{host}", dead)
    finished = _run(client, experiment_id, host, dead)
    client.set_terminated(finished, "FINISHED")

    assert reconcile_stale_runs(client, [experiment_id]) == 3

    def status(run_id):
        return client.get_run(run_id).info.status

    assert status(stale_trial) == status(stale_sweep) == "KILLED"
    assert status(reused_pid) == "KILLED"   # the pid lives, but it is another process
    assert status(alive) == status(alive_same_start) == status(mine) == "RUNNING"
    assert status(elsewhere) == "RUNNING"
    assert status(finished) == "FINISHED"
    tags = client.get_run(stale_trial).data.tags
    assert tags["cnnsearch.status"] == "killed"        # what `cnnsearch results` shows
    assert str(dead) in tags["cnnsearch.reason"]
    assert "cnnsearch.status" not in client.get_run(stale_sweep).data.tags
    assert reconcile_stale_runs(client, [experiment_id]) == 0


def process_tags_of(pid: int) -> str:
    return f"{psutil.Process(pid).create_time():.2f}"


def test_process_tags_name_this_process():
    assert process_tags() == {"cnnsearch.host": socket.gethostname(),
                              "cnnsearch.pid": str(os.getpid()),
                              "cnnsearch.process_start": process_tags_of(os.getpid())}


# -- open_store --------------------------------------------------------------------------


def test_local_store_lives_under_the_root(tmp_path):
    spec = TrackingConfig(root=str(tmp_path))
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert spec.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    open_store(spec)
    assert (tmp_path / "mlflow").is_dir()


def test_a_new_store_appears_whole_even_after_a_killed_creator(tmp_path):
    spec = TrackingConfig(root=str(tmp_path))
    spec.store_dir.mkdir(parents=True)
    stale = spec.store_dir / ".mlflow.db.partial-999999"   # a creator killed mid-way
    stale.write_bytes(b"half a database")
    client = open_store(spec)
    assert spec.store_file.is_file() and not stale.exists()
    assert [p.name for p in spec.store_dir.glob(".mlflow.db.partial-*")] == []
    assert experiment_id(client, spec) == experiment_id(open_store(spec), spec)


@pytest.mark.parametrize(("spec", "words"), [
    (TrackingConfig(mode="server", uri="127.0.0.1:5000"), ["tracking.uri", "http://"]),
    (TrackingConfig(mode="server", uri="http://127.0.0.1:9"),
     ["tracking.uri=http://127.0.0.1:9", "unreachable"]),
    (TrackingConfig(root="/proc/cnnsearch-test"), ["/proc/cnnsearch-test/mlflow"]),
])
def test_unusable_stores_are_one_line_errors(spec, words):
    with pytest.raises(TrackingError) as info:
        open_store(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# -- bad tracking input through the command line (in this process) ------------------------


def _error(code: int, err: str) -> str:
    """The one error line of a failed command (log lines before it allowed)."""
    assert code == 2, err
    lines = error_lines(err)
    errors = [line for line in lines if line.startswith("cnnsearch: error: ")]
    assert errors == lines[-1:], err
    assert "Traceback" not in err
    return errors[0]


def test_unreachable_server_fails_fast_before_any_work(cli_in_process, tmp_path):
    root = tmp_path / "out"
    started = time.monotonic()
    code, out, err = cli_in_process("sweep", f"paths.root={root}", *QUICK, "tracking=server",
                                    "tracking.uri=http://127.0.0.1:9")
    assert time.monotonic() - started < 15
    assert len(error_lines(err)) == 1, err
    assert "tracking.uri=http://127.0.0.1:9" in _error(code, err)
    assert out == ""
    assert not root.exists()


def test_a_password_in_the_tracking_uri_is_never_printed(cli_in_process, tmp_path):
    code, out, err = cli_in_process("sweep", f"paths.root={tmp_path / 'out'}", *QUICK,
                                    "tracking=server", "tracking.uri=http://alice:s3cret@127.0.0.1:9")
    assert "tracking.uri=http://***@127.0.0.1:9" in _error(code, err)
    assert "s3cret" not in out + err and "alice" not in out + err


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://alice:s3cret@mlflow.example:5000/x?y=1", "http://***@mlflow.example:5000/x?y=1"),
    ("https://token@host", "https://***@host"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),   # '@' in a path only
    (None, None),
])
def test_redact_masks_only_the_user_part(uri, shown):
    assert redact(uri) == shown


def test_server_without_uri_names_the_key(cli_in_process, tmp_path):
    root = tmp_path / "out"
    code, out, err = cli_in_process("sweep", f"paths.root={root}", *QUICK, "tracking=server")
    assert len(error_lines(err)) == 1, err
    assert "tracking.uri" in _error(code, err)
    assert not root.exists()


def test_store_under_a_file_is_one_line_and_nothing_is_trained(cli_in_process, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli_in_process("sweep", f"paths.root={blocker / 'out'}", *QUICK)
    assert f"{blocker / 'out' / 'mlflow'}" in _error(code, err)
    assert "trial" not in err
    assert blocker.read_text() == "not a folder"


def test_store_that_cannot_be_created_is_one_line(cli_in_process):
    root = "/proc/cnnsearch-test/out"   # nobody, not even root, can create folders in /proc
    code, _, err = cli_in_process("sweep", f"paths.root={root}", *QUICK)
    assert f"{root}/mlflow" in _error(code, err)
    assert "trial" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_root_is_one_line(cli_in_process, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = cli_in_process("sweep", f"paths.root={locked / 'out'}", *QUICK)
        assert f"{locked / 'out' / 'mlflow'}" in _error(code, err)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# -- tracking=none -----------------------------------------------------------------------


def test_tracking_none_sweeps_without_mlflow(cli_in_process, tmp_path):
    root = tmp_path / "out"
    code, out, err = cli_in_process("sweep", f"paths.root={root}", "tracking=none",
                                    "experiment=quick", "tuner.max_trials=1", "training.epochs=1",
                                    "data.limit=200")
    assert code == 0, err[-3000:]
    assert "val accuracy" in out
    (sweep_dir,) = (root / "sweeps").iterdir()
    assert (sweep_dir / "best_model.keras").is_file()
    assert sorted(path.name for path in root.iterdir()) == ["sweeps"]
    assert "MLflow" not in err
