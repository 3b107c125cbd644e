"""``tracking=server`` end to end: a real MLflow tracking server over a real PostgreSQL.

A team deployment of the server: ``mlflow server`` with a PostgreSQL
backend store, artifacts proxied by the server (``--artifacts-destination``), clients
that only know ``http://host:port``. PostgreSQL runs from a throw-away data folder on
a free port (as the ``postgres`` user when the tests run as root: it refuses root);
without its server binaries the module is skipped (CI installs them, see .ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PG_USER = "postgres"
EXPERIMENT = "digits"
REGISTERED_MODEL = "cnnsearch-digits"
EPOCHS = 2
# Start-up (imports, schema migrations of the empty database) took 35-60 s on a busy
# 2-core machine.
SERVER_START_TIMEOUT = 180
# Lines TensorFlow's C++ runtime writes to stderr before Python can silence it.
TF_NOISE = ("I0000 ", "E0000 ", "W0000 ", "WARNING: All log messages",
            "To enable the following")


# -- PostgreSQL --------------------------------------------------------------------------


def _pg_bin_dir() -> Path | None:
    """The folder of initdb / pg_ctl: the newest /usr/lib/postgresql/<v>/bin, else PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).resolve().parent)):
        return Path(initdb).resolve().parent
    return None


def _as_pg_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run the command as the postgres user."""
    if os.geteuid() != 0:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", PG_USER, "--", *command]
    return ["su", PG_USER, "-s", "/bin/sh", "-c", shlex.join(command)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], what: str, timeout: float = 120) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {shlex.join(command)}\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@dataclass(frozen=True)
class Postgres:
    port: int

    def dsn(self, database: str = "postgres") -> str:
        """libpq form, for psycopg2 itself."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def sqlalchemy_uri(self, database: str = "mlflow") -> str:
        """For ``mlflow server``: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3."""
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{database}"

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


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server on a free port with an empty ``mlflow`` database."""
    psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                    "apt-get install postgresql")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no {PG_USER!r} user to run PostgreSQL")
    # Not under pytest's tmp_path: its root folder is private to the test user.
    base = Path(tempfile.mkdtemp(prefix="cnnsearch-pg-"))
    if os.geteuid() == 0:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, sockets, logfile = base / "data", base / "sockets", base / "postgres.log"
    port = _free_port()
    started = False
    try:
        _run(_as_pg_user(["mkdir", str(sockets)]), "mkdir")
        _run(_as_pg_user([str(bin_dir / "initdb"), "-D", str(data), "--auth=trust",
                          f"--username={PG_USER}", "--encoding=UTF8", "--no-locale"]), "initdb")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
                   "-c fsync=off -c full_page_writes=off")
        started = True
        try:
            _run(_as_pg_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile),
                              "-w", "-t", "60", "-o", options, "start"]), "pg_ctl start")
        except RuntimeError as error:
            log = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else ""
            raise RuntimeError(f"{error}\n{log}") from None
        server = Postgres(port)
        connection = psycopg2.connect(server.dsn(), connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE mlflow")
        finally:
            connection.close()
        yield server
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run(_as_pg_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                  "-w", "-t", "60", "stop"]), "pg_ctl stop")
        shutil.rmtree(base, ignore_errors=True)


# -- MLflow server -----------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    artifacts: Path


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server(postgres: Postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` over PostgreSQL, proxying artifact uploads into a local folder.

    ``--artifacts-destination`` (with the default ``--serve-artifacts``) makes new
    experiments' artifact root ``mlflow-artifacts:/``: clients upload over HTTP and
    never touch the folder themselves, as with a remote server.
    """
    base = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log_path = base / "artifacts", base / "server.log"
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", postgres.sqlalchemy_uri(),
               "--artifacts-destination", str(artifacts),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # MLflow 3's job runner (7 huey consumers, for GenAI jobs cnnsearch never submits)
    # would double the processes and the start-up time.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=base, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                state = (f"exited {process.returncode}" if process.poll() is not None
                         else f"no healthy answer in {SERVER_START_TIMEOUT} s")
                raise RuntimeError(f"mlflow server {state}:\n"
                                   f"{log_path.read_text(errors='replace')[-5000:]}")
            time.sleep(0.5)
        yield MlflowServer(uri, artifacts)
    finally:
        _stop(process)


# -- the CLI -----------------------------------------------------------------------------


def _cnnsearch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("cnnsearch")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cnnsearch"]
    env = {k: v for k, v in os.environ.items()
           if k != "HYDRA_FULL_ERROR" and not k.startswith("MLFLOW_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", NO_COLOR="1", COLUMNS="200")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env,
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


def test_sweep_records_runs_model_and_artifacts_through_the_server(swept, postgres):
    server, root = swept
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
    assert {"config.yaml", "model", "leaderboard.csv"} <= names
    model_files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "model")}
    assert "MLmodel" in model_files
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
