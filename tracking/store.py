"""Where runs are stored: the MLflow tracking URI, its health, and stale-run cleanup."""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.request

import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from cnnsearch.tracking.config import TrackingConfig, TrackingMode

log = logging.getLogger(__name__)

TAG_ROLE = "cnnsearch.role"
TAG_HOST = "cnnsearch.host"
TAG_PID = "cnnsearch.pid"
TAG_STATUS = "cnnsearch.status"   # of a trial run: running | completed | failed | killed
TAG_REASON = "cnnsearch.reason"
EXPERIMENT_KIND = "mlflow.experimentKind"   # an experiment tag the UI reads


class TrackingError(Exception):
    """The tracking store cannot be used (unreachable, not writable): one line for the user."""


def open_store(spec: TrackingConfig) -> MlflowClient:
    """Check the store is usable and return a client for it.

    Raises:
        TrackingError: unreachable server or non-writable folder.
    """
    if spec.mode == TrackingMode.server:
        _check_server(spec.uri)
    else:
        try:
            spec.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"cannot create the MLflow store in {spec.store_dir}: "
                                f"{error.strerror}") from None
        if not os.access(spec.store_dir, os.W_OK):
            raise TrackingError(f"the MLflow store folder {spec.store_dir} is not writable")
    return MlflowClient(spec.tracking_uri)


def experiment_id(client: MlflowClient, spec: TrackingConfig, create: bool = True) -> str | None:
    """The id of the configured experiment, created if needed (and allowed)."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    # the UI then opens it as a model-training experiment (runs), not a GenAI one (traces)
    return client.create_experiment(spec.experiment, artifact_location=spec.artifact_location,
                                    tags={EXPERIMENT_KIND: "custom_model_development"})


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
        if pid != os.getpid() and not psutil.pid_exists(pid):
            if TAG_STATUS in run.data.tags:
                client.set_tag(run.info.run_id, TAG_STATUS, "killed")
                client.set_tag(run.info.run_id, TAG_REASON,
                               f"process {pid} on {host} ended without closing the run")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            marked += 1
    if marked:
        log.info("marked %d stale run(s) KILLED (their process is gone)", marked)
    return marked


def process_tags() -> dict[str, str]:
    """Host and pid, so a later start can tell a live run from a dead one."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def _check_server(uri: str | None) -> None:
    if not uri or not uri.startswith(("http://", "https://")):
        raise TrackingError(f"tracking=server needs tracking.uri=http://host:port, got {uri!r}")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server at {uri} answered {response.status}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"MLflow server at tracking.uri={uri} is unreachable: "
                            f"{reason}") from None
