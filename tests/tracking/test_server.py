"""``cnnsearch server`` and ``tracking=server`` end to end: the MLflow tracking server
that ``cnnsearch server`` starts over a real PostgreSQL (initdb under paths.root,
loopback only), clients that only know ``http://host:port``, and a clean stop.

Without PostgreSQL's server binaries the module is skipped (CI installs them, see
.ci/run). When the tests run as root, PostgreSQL runs as the ``postgres`` user, so the
output root is a world-readable temporary folder, not pytest's private tmp_path.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.consistency import SWEEP, check_consistent, completed_trials
from tests.tracking.conftest import Store, wait_for_text

pytestmark = pytest.mark.slow

PG_USER = "postgres"
EXPERIMENT = "digits"
REGISTERED_MODEL = "cnnsearch-digits"
EPOCHS = 2
# Start-up (imports, schema migrations of the empty database) took 35-60 s on a busy
# 2-core machine.
SERVER_START_TIMEOUT = 240
# Lines TensorFlow's C++ runtime writes to stderr before Python can silence it.
TF_NOISE = ("I0000 ", "E0000 ", "W0000 ", "WARNING: All log messages",
            "To enable the following")

if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")):
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                "apt-get install postgresql", allow_module_level=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Postgres:
    port: int

    def query(self, sql: str, database: str = "mlflow") -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER,
                                      dbname=database, connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            connection.close()


@dataclass(frozen=True)
class MlflowServer:
    port: int
    artifacts: Path
    postgres: Postgres
    base: Path   # paths.root of the server
    process: subprocess.Popen
    log: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _start_server(base: Path, port: int, pg_port: int) -> tuple[subprocess.Popen, Path]:
    log = base / "cnnsearch-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*_command(), "server", f"paths.root={base}", f"server.port={port}",
             f"server.postgres_port={pg_port}"], stdout=out, stderr=subprocess.STDOUT,
            env=_env(), start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while "MLflow tracking server:" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"cnnsearch server did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)
    return process, log


def _stop_server(process: subprocess.Popen, log: Path) -> None:
    """SIGTERM, as a service manager stops it: it must stop both servers and exit 0."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"cnnsearch server did not stop:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    """``cnnsearch server`` on free ports, its output root a fresh world-readable folder."""
    base = Path(tempfile.mkdtemp(prefix="cnnsearch-server-"))
    base.chmod(0o755)
    port, pg_port = _free_port(), _free_port()
    process, log = _start_server(base, port, pg_port)
    try:
        yield MlflowServer(port, base / "server" / "artifacts", Postgres(pg_port), base,
                           process, log)
    finally:
        if process.poll() is None:
            _stop_server(process, log)
        shutil.rmtree(base, ignore_errors=True)


# -- the CLI -----------------------------------------------------------------------------


def _command() -> list[str]:
    script = Path(sys.executable).with_name("cnnsearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnnsearch"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "HYDRA_FULL_ERROR" and not k.startswith("MLFLOW_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", NO_COLOR="1", COLUMNS="200")
    return env


def _cnnsearch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*_command(), *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout, check=False)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(TF_NOISE)]


@pytest.fixture(scope="module")
def swept(mlflow_server: MlflowServer, tmp_path_factory) -> tuple[MlflowServer, Path]:
    """One small sweep recorded to the server (2 trials, 200 images)."""
    root = tmp_path_factory.mktemp("sweep-root")
    done = _cnnsearch("sweep", "tracking=server", f"tracking.uri={mlflow_server.uri}",
                      "experiment=quick", "tuner.max_trials=2", f"training.epochs={EPOCHS}",
                      "data.limit=200", f"paths.root={root}")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return mlflow_server, root


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


# -- tests -------------------------------------------------------------------------------


def test_sweep_records_runs_model_and_artifacts_through_the_server(swept):
    server, root = swept
    postgres = server.postgres
    client = _client(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's choice

    parents = client.search_runs([experiment.experiment_id],
                                 filter_string="tags.`cnnsearch.role` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials"] == 2
    assert "test_accuracy" in parent.data.metrics

    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["cnnsearch.role"] == "trial"
        assert child.data.tags["cnnsearch.status"] == "completed"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(EPOCHS))
        assert all(0.0 <= m.value <= 1.0 for m in history)

    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert len(versions) >= 1
    assert versions[0].run_id == parent.info.run_id
    assert "test_accuracy" in versions[0].tags

    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "leaderboard.csv"} <= names
    (model,) = client.search_logged_models(
        [parent.info.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    # Uploaded through the server's artifact proxy into its destination folder.
    assert list(server.artifacts.rglob("config.yaml"))
    assert list(server.artifacts.rglob("MLmodel"))
    assert not (root / "mlflow").exists()  # nothing written to a local store

    # And the records really live in PostgreSQL.
    assert postgres.query("select count(*) from runs")[0][0] >= 3
    assert postgres.query("select count(*) from metrics where key = 'val_accuracy'")[0][0] \
        == 2 * EPOCHS
    assert postgres.query(
        f"select count(*) from model_versions where name = '{REGISTERED_MODEL}'")[0][0] >= 1


def test_results_reads_the_leaderboard_from_the_server(swept, tmp_path):
    server, root = swept
    csv = tmp_path / "leaderboard.csv"
    done = _cnnsearch("results", "tracking=server", f"tracking.uri={server.uri}",
                      f"paths.root={root}", f"results.csv={csv}", timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    rows = [line for line in done.stdout.splitlines() if "completed" in line]
    assert len(rows) == 2, done.stdout
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 2
    assert list(table["rank"]) == [1, 2]


def test_unreachable_server_fails_fast_in_one_line(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"   # nothing listens there
    started = time.monotonic()
    done = _cnnsearch("sweep", "tracking=server", f"tracking.uri={uri}", "experiment=quick",
                      f"paths.root={tmp_path}", timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert uri in lines[0] and "unreachable" in lines[0]
    assert not (tmp_path / "sweeps").exists()   # refused before any training
    # Nearly all of it is importing TensorFlow (20-23 s on a busy 2-core machine); a
    # retrying client or a sweep that loads data and trains first would take far longer.
    assert seconds < 60, f"took {seconds:.1f} s"


def test_the_server_stops_cleanly_and_restarts_on_its_records(swept):
    server, _ = swept
    # the module's server is stopped here (its teardown then has nothing to stop)
    _stop_server(server.process, server.log)
    assert not _listening(server.postgres.port) and not _listening(server.port)
    assert not (server.base / "server" / "postgres" / "postmaster.pid").exists()

    port = _free_port()
    again, log = _start_server(server.base, port, server.postgres.port)
    try:
        client = _client(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name(EXPERIMENT)
        assert experiment is not None and client.search_runs([experiment.experiment_id])
    finally:
        _stop_server(again, log)


def _kill_server(process: subprocess.Popen, base: Path) -> None:
    """SIGKILL ``cnnsearch server`` and all it started (MLflow, its web workers,
    PostgreSQL), as when the server's host goes down."""
    import psutil

    postmaster = int((base / "server" / "postgres" / "postmaster.pid").read_text().split()[0])
    tree = []
    for root in (psutil.Process(process.pid), psutil.Process(postmaster)):
        tree += [root, *root.children(recursive=True)]
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=30)
    process.wait()


def test_a_server_killed_while_a_sweep_writes_stops_it_in_one_line_and_it_resumes(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="cnnsearch-server-"))
    base.chmod(0o755)
    port, pg_port = _free_port(), _free_port()
    server, log = _start_server(base, port, pg_port)
    uri = f"http://127.0.0.1:{port}"
    args = [*_command(), *SWEEP, "tracking=server", f"tracking.uri={uri}",
            f"paths.root={tmp_path}"]
    # MLflow retries a write for about 4 minutes by default; 2 tries keep the test short
    env = {**_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    stderr = tmp_path / "sweep.err"
    try:
        with stderr.open("w") as err:
            sweep = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                     start_new_session=True)
        wait_for_text(stderr, "trial 0: score", sweep, timeout=300)
        _kill_server(server, base)
        killed = time.monotonic()
        assert sweep.wait(timeout=300) == 2, stderr.read_text()[-3000:]
        stopped_after = time.monotonic() - killed
        text = stderr.read_text()
        assert "Traceback" not in text, text[-3000:]
        last = _error_lines(text)[-1]
        assert f"the MLflow server at {uri} stopped answering" in last, text[-3000:]
        assert stopped_after < 120, f"the sweep went on {stopped_after:.0f} s without MLflow"
        before = completed_trials(tmp_path)

        server, log = _start_server(base, port, pg_port)
        again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resuming sweep" in again.stderr
        client = _client(uri)
        store = Store(client, client.get_experiment_by_name(EXPERIMENT).experiment_id)
        check_consistent(tmp_path, before, store)
    finally:
        if server.poll() is None:
            _stop_server(server, log)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_missing_or_a_port_in_use_fail_in_one_line(tmp_path):
    done = _cnnsearch("server", f"paths.root={tmp_path}", "server.postgres_bin=/nonexistent",
                      timeout=120)
    assert done.returncode == 2
    (line,) = _error_lines(done.stderr)
    assert "PostgreSQL is not installed" in line and "/nonexistent" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cnnsearch("server", f"paths.root={tmp_path}", f"server.port={port}",
                          timeout=120)
    assert done.returncode == 2
    (line,) = _error_lines(done.stderr)
    assert f"server.port={port}" in line and "in use" in line
    assert not (tmp_path / "server").exists()
