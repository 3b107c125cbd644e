"""``cnnsearch server``: an MLflow tracking server on a PostgreSQL store, on this host.

For users who have no tracking server: PostgreSQL's data folder is made (``initdb``)
under ``paths.root/server``, PostgreSQL and MLflow listen on the loopback interface
only, and both stop cleanly with Ctrl-C or SIGTERM; the next start reuses the folder.
When run as root, PostgreSQL (which refuses root) runs as the ``postgres`` user.
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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cnnsearch.search.errors import last_line
from cnnsearch.tracking.config import TrackingError

HOST = "127.0.0.1"
PG_USER = "postgres"
START_TIMEOUT = 180.0   # MLflow's first start migrates an empty database (~40 s on 2 cores)


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL of ours."""

    bin_dir: Path
    data: Path
    port: int

    @property
    def store_uri(self) -> str:
        """For MLflow: ``+psycopg2`` spelled out (SQLAlchemy reads a bare
        ``postgresql://`` as psycopg 3)."""
        return f"postgresql+psycopg2://{PG_USER}@{HOST}:{self.port}/mlflow"


def find_postgres(bin_dir: str | None) -> Path:
    """The folder of ``initdb`` and ``pg_ctl``.

    Raises:
        TrackingError: if PostgreSQL's server programs are not there.
    """
    if bin_dir:
        folders = [Path(bin_dir)]
    else:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                       else 0)
        on_path = shutil.which("initdb")
        folders = [Path(p).parent for p in reversed(found)]
        folders += [Path(on_path).resolve().parent] if on_path else []
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    where = f"in server.postgres_bin={bin_dir}" if bin_dir else \
        "under /usr/lib/postgresql/*/bin or on PATH"
    raise TrackingError(f"PostgreSQL is not installed (no initdb and pg_ctl {where}): "
                        "apt-get install postgresql, or point server.postgres_bin at them")


def check_port_free(port: int, key: str) -> None:
    """Raises TrackingError naming ``key`` if something listens on ``HOST:port``."""
    with socket.socket() as sock:
        # as the servers bind: a port whose last connections wait out TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise TrackingError(f"{key}={port}: the port is in use on {HOST}; choose "
                                "another") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres(base: Path, bin_dir: Path, port: int) -> Iterator[Postgres]:
    """PostgreSQL on ``HOST:port`` over ``base/postgres`` (made on first use), with a
    ``mlflow`` database; stopped (fast shutdown) on exit."""
    data, sockets, logfile = base / "postgres", base / "sockets", base / "postgres.log"
    base.mkdir(parents=True, exist_ok=True)
    _own(base)
    if not (data / "PG_VERSION").exists():
        _run([str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", f"--username={PG_USER}",
              "--encoding=UTF8", "--no-locale"], "initdb")
    _run(["mkdir", "-p", str(sockets)], "mkdir")
    options = f"-c listen_addresses={HOST} -p {port} -k {sockets}"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "60",
          "-o", options, "start"], "PostgreSQL start", logfile)
    try:
        server = Postgres(bin_dir, data, port)
        _create_database(server)
        yield server
    finally:
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60",
              "stop"], "PostgreSQL stop")


def _create_database(server: Postgres) -> None:
    import psycopg2

    connection = psycopg2.connect(host=HOST, port=server.port, user=PG_USER, dbname="postgres",
                                  connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
            if cursor.fetchone() is None:
                cursor.execute("CREATE DATABASE mlflow")
    finally:
        connection.close()


def mlflow_server(store_uri: str, artifacts: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on ``HOST:port``, artifacts proxied into ``artifacts``; returns
    once it answers.

    Raises:
        TrackingError: if it exits or does not answer within START_TIMEOUT.
    """
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
               "--artifacts-destination", str(artifacts), "--host", HOST, "--port", str(port),
               "--workers", "2"]
    # MLflow 3's job runner serves GenAI jobs cnnsearch never submits
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    logfile = artifacts.parent / "mlflow-server.log"
    with logfile.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not _healthy(f"http://{HOST}:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise TrackingError(f"mlflow server did not start (see {logfile}): "
                                    f"{_log_tail(logfile)}")
            time.sleep(0.5)
    except BaseException:   # not started, or Ctrl-C meanwhile: leave nothing running
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its web workers too), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _own(base: Path) -> None:
    """As root: the folder belongs to the postgres user, who runs PostgreSQL."""
    if os.geteuid() != 0:
        return
    user = _pg_user()
    os.chown(base, user.pw_uid, user.pw_gid)
    try:
        _run(["test", "-w", str(base)], "check")
    except TrackingError:
        raise TrackingError(f"running as root, PostgreSQL runs as the {PG_USER!r} user, who "
                            f"cannot reach {base} (a parent folder is private): set "
                            "paths.root to a folder it can reach, e.g. /srv/cnnsearch") from None


def _pg_user():
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise TrackingError(f"running as root, and there is no {PG_USER!r} user to run "
                            "PostgreSQL (it refuses root)") from None


def _run(command: list[str], what: str, logfile: Path | None = None) -> None:
    if os.geteuid() == 0:   # PostgreSQL refuses to run as root
        _pg_user()
        command = (["runuser", "-u", PG_USER, "--", *command] if shutil.which("runuser")
                   else ["su", PG_USER, "-s", "/bin/sh", "-c", shlex.join(command)])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        output = done.stderr if done.stderr.strip() else done.stdout
        detail = (_log_tail(logfile) if logfile and logfile.exists()
                  else last_line(output) or "(no output)")
        raise TrackingError(f"{what} failed: {detail}")


def _log_tail(path: Path) -> str:
    """The last line of a server's log file."""
    return last_line(path.read_text(errors="replace")) or "(no output)"
