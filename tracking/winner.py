"""Find a sweep's winning model in the MLflow store (for export), and log exports back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import LoggedModelStatus, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnnsearch.search.errors import first_line
from cnnsearch.tracking.config import TrackingError
from cnnsearch.tracking.results import latest_sweep
from cnnsearch.tracking.store import RunState


@dataclass(frozen=True)
class Winner:
    """Where the model is, which sweep made it, and that sweep's config."""

    model_uri: str
    run_id: str
    sweep_name: str
    config: dict
    test_accuracy: float | None


def find_winner(client: MlflowClient, experiment_id: str | None, run: str = "latest",
                model: str | None = None) -> Winner:
    """Resolve ``export.model`` (a registry URI) or ``export.run`` (latest or a run id).

    Raises:
        TrackingError: no finished sweep, an unknown run id or registered model.
    """
    if model:
        run_id, model_uri = _from_registry(client, model), model
    elif run == "latest":
        parent = None if experiment_id is None else latest_sweep(client, [experiment_id])
        if parent is None:
            raise TrackingError("no finished sweep to export yet; run `cnnsearch sweep` first")
        if parent.info.status != RunState.FINISHED:   # never a silently older model
            done = latest_sweep(client, [experiment_id], finished=True)
            other = (f"export.run={done.info.run_id} exports the latest finished one "
                     f"({done.info.run_name})" if done else "no sweep has finished yet")
            raise TrackingError(f"the latest sweep {parent.info.run_name} is "
                                f"{parent.info.status} and has no final model; {other}")
        run_id, model_uri = parent.info.run_id, None
    else:
        run_id, model_uri = run, None
    try:
        parent = client.get_run(run_id)
        config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml"))
                                .read_text())
    except MlflowException:
        raise TrackingError(f"run {run_id} is not a cnnsearch sweep in this store") from None
    model_uri = model_uri or sweep_model_uri(client, parent)
    return Winner(model_uri, run_id, parent.info.run_name or run_id, config,
                  parent.data.metrics.get("test_accuracy"))


def sweep_model_uri(client: MlflowClient, sweep: Run) -> str:
    """``models:/<id>`` of the sweep's newest complete model (a resumed sweep logs anew).

    Raises:
        TrackingError: the sweep has no complete model (it never finished).
    """
    models = client.search_logged_models(
        [sweep.info.experiment_id],
        filter_string=f"source_run_id = '{sweep.info.run_id}' AND name = 'model'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    if not ready:
        raise TrackingError(f"sweep run {sweep.info.run_id} ({sweep.info.run_name}) has no "
                            f"final model; only a finished sweep has one")
    return f"models:/{ready[0].model_id}"


def load_model(winner: Winner, tracking_uri: str):
    """The winner as a Keras model."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.keras.load_model(winner.model_uri)


def log_export(client: MlflowClient, run_id: str, directory: Path) -> None:
    """Attach the exported files and their manifest to the sweep run."""
    client.log_artifacts(run_id, str(directory), "export")


def _from_registry(client: MlflowClient, uri: str) -> str:
    """The sweep run behind a model URI (``models:/<name>/<version|latest>``,
    ``models:/<name>@<alias>``, ``models:/<id>``), as MLflow resolves it."""
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        return mlflow.models.get_model_info(uri).run_id
    except MlflowException as error:
        raise TrackingError(f"export.model={uri}: {first_line(error.message)}") from None
