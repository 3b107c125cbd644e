"""Where runs are stored: the MLflow tracking URI, its health, and stale-run cleanup."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnnsearch.search.events import TrialState
from cnnsearch.tracking.config import TrackingConfig, TrackingError, TrackingMode, redact

log = logging.getLogger(__name__)

TAG_ROLE = "cnnsearch.role"
TAG_HOST = "cnnsearch.host"
TAG_PID = "cnnsearch.pid"
TAG_PROCESS_START = "cnnsearch.process_start"   # psutil create_time of that pid


class RunState(StrEnum):
    """MLflow's run statuses, by name (``RunStatus`` is an int enum without them)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


TAG_STATUS = "cnnsearch.status"   # of a trial run: running | completed | failed | killed
TAG_REASON = "cnnsearch.reason"
EXPERIMENT_KIND = "mlflow.experimentKind"   # an experiment tag the UI reads
STORE_LOCK = ".cnnsearch.lock"   # beside the local store's mlflow.db


def open_store(config: TrackingConfig) -> MlflowClient:
    """Check the store is usable and return a client for it.

    Raises:
        TrackingError: unreachable server or non-writable folder.
    """
    if config.mode == TrackingMode.server:
        _check_server(config.uri)
    else:
        try:
            config.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"cannot create the MLflow store in {config.store_dir}: "
                                f"{error.strerror}") from None
        if not os.access(config.store_dir, os.W_OK):
            raise TrackingError(f"the MLflow store folder {config.store_dir} is not writable")
        with _store_lock(config.store_dir):   # one process creates or upgrades the schema
            if not config.uri:
                _create_atomically(config.store_file)
            client = MlflowClient(config.tracking_uri)
            client.search_experiments(max_results=1)
        return client
    return MlflowClient(config.tracking_uri)


def open_existing_store(config: TrackingConfig) -> MlflowClient | None:
    """A client on the store if it is already there (a server: if it answers), opened
    without writing anything; None if a local store is not made yet or does not open
    (``open_store`` then makes it, or says why it cannot).

    Raises:
        TrackingError: the server does not answer.
    """
    if config.mode == TrackingMode.server:
        return open_store(config)
    if not config.store_file.is_file():
        return None
    try:
        return _read_only(config)
    except (MlflowException, OSError):
        return None


def _read_only(config: TrackingConfig) -> MlflowClient:
    client = MlflowClient(config.tracking_uri)
    client.search_experiments(max_results=1)
    return client


def _create_atomically(db: Path) -> None:
    """Create a new SQLite store's tables in a side file, then move it in place at once:
    a process killed during MLflow's table creation leaves no half-made store. Called
    under the store lock, so any side file found is a killed creator's."""
    if db.exists():
        return
    for stale in db.parent.glob(f".{db.name}.partial-*"):   # left by a killed creator
        if stale.name.rpartition("-")[2].isdigit() and stale.is_file() and not stale.is_symlink():
            stale.unlink()   # only our own side files: .mlflow.db.partial-<pid>
    partial = db.with_name(f".{db.name}.partial-{os.getpid()}")
    MlflowClient(f"sqlite:///{partial}").search_experiments(max_results=1)
    os.replace(partial, db)


@contextmanager
def _store_lock(store_dir: Path):
    """An exclusive lock on a local store, across processes.

    MLflow creates a new SQLite store's tables when it first opens it; several sweeps
    starting at once on a new store would race in that migration and leave it broken.
    """
    with open(store_dir / STORE_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(client: MlflowClient, config: TrackingConfig, create: bool = True) -> str | None:
    """The id of the configured experiment, created if needed (and allowed)."""
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    try:   # the UI then opens it as a model-training experiment (runs), not a GenAI one
        return client.create_experiment(config.experiment,
                                        artifact_location=config.artifact_location,
                                        tags={EXPERIMENT_KIND: "custom_model_development"})
    except MlflowException:   # another sweep created it a moment ago
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def reconcile_stale_runs(client: MlflowClient, experiment_ids: list[str]) -> int:
    """Mark KILLED the runs of this suite still RUNNING whose process is gone.

    Only runs started on this host are judged (a pid means nothing elsewhere). A trial
    run's status tag (what ``cnnsearch results`` shows) is set to ``killed`` as well.

    Returns:
        How many runs were marked.
    """
    host = socket.gethostname()
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
        max_results=10_000,
    )
    marked = 0
    for run in runs:
        pid = int(run.data.tags.get(TAG_PID, "0"))
        if pid != os.getpid() and not _alive(pid, run.data.tags.get(TAG_PROCESS_START)):
            if TAG_STATUS in run.data.tags:
                client.set_tag(run.info.run_id, TAG_STATUS, TrialState.killed)
                client.set_tag(run.info.run_id, TAG_REASON,
                               f"process {pid} on {host} ended without closing the run")
            client.set_terminated(run.info.run_id, RunState.KILLED)
            marked += 1
    if marked:
        log.info("marked %d stale run(s) KILLED (their process is gone)", marked)
    return marked


def process_tags() -> dict[str, str]:
    """Host, pid and the process's start time, so a later start can tell a live run from
    a dead one (the start time tells a reused pid, e.g. in a restarted container)."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
            TAG_PROCESS_START: _started(os.getpid())}


def _started(pid: int) -> str:
    return f"{psutil.Process(pid).create_time():.2f}"


def _alive(pid: int, started: str | None) -> bool:
    """True if process ``pid`` runs and, when ``started`` is known, is the same process.

    A zombie (dead, not yet reaped: e.g. the sweep's MLflow recorder killed with it, until
    init collects it) is not alive.
    """
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
        actual = _started(pid)
    except psutil.Error:   # no such process (or not ours to inspect: then it is not ours)
        return False
    return started is None or actual == started


def _check_server(uri: str | None) -> None:
    shown = redact(uri)   # never print a password given in the URI
    if not uri or not uri.startswith(("http://", "https://")):
        raise TrackingError(f"tracking=server needs tracking.uri=http://host:port, got {shown!r}")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server at {shown} answered {response.status}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"MLflow server at tracking.uri={shown} is unreachable: "
                            f"{reason}") from None
