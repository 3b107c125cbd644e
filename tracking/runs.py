"""MLflow records of a sweep: one parent run per sweep, one nested child run per trial.

:class:`MlflowRecorder` is a sweep observer (see ``search.events``): it receives plain
values as the sweep runs and never leaves a run in a lie. Every run it opens is closed
FINISHED, FAILED (with the reason) or KILLED (Ctrl-C, SIGTERM), and runs left RUNNING
by a killed process are marked KILLED at the next start.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import yaml
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from cnnsearch.search.errors import first_line
from cnnsearch.search.events import TrialState
from cnnsearch.tracking.config import TrackingConfig
from cnnsearch.tracking.environment import environment_tags
from cnnsearch.tracking.results import leaderboard, log_plots
from cnnsearch.tracking.store import (
    TAG_HOST,
    TAG_PID,
    TAG_PROCESS_START,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATUS,
    RunState,
    TrackingError,
    experiment_id,
    open_store,
    process_tags,
    reconcile_stale_runs,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

TAG_SWEEP = "cnnsearch.sweep"
TAG_HASH = "cnnsearch.space_hash"
TAG_TRIAL = "cnnsearch.trial_id"
TAG_ARCH = "cnnsearch.architecture"
TAG_TRAINED_BY = "cnnsearch.trained_by"   # host:pid of the process that trains the trial
TAG_NOTE = "mlflow.note.content"   # the run's description in the UI
WINNER_NOTE = "\n\nWinner: "
MAX_PARAM_LENGTH = 6000


class MlflowRecorder:
    """Records a sweep in MLflow as it runs.

    Args:
        config: where and under which names to record.
        environment: the sweep's environment tags (``environment_tags()`` read in the
            sweep's process); None: read them here.
        client: a client on the store already open (``open_existing_store``); None:
            open (or create) it here.
    """

    def __init__(self, config: TrackingConfig, environment: dict[str, str] | None = None,
                 client: MlflowClient | None = None) -> None:
        self.config = config
        self.environment = environment
        self.client: MlflowClient = client or open_store(config)
        self.experiment_id = experiment_id(self.client, config)
        self.parent_id: str | None = None
        self.children: dict[str, str] = {}   # trial id -> open child run id
        self.objective = "val_accuracy"
        self.sweep_name = ""
        self.owns_parent = True   # False in a distributed sweep's worker

    # -- sweep -----------------------------------------------------------------

    def sweep_started(self, info) -> None:
        self.objective, self.sweep_name = info.objective, info.name
        reconcile_stale_runs(self.client, [self.experiment_id])
        previous = self._find_parent(info.name, info.space_hash) if info.resumed else None
        tags = {TAG_ROLE: "sweep", TAG_SWEEP: info.name, TAG_HASH: info.space_hash,
                **process_tags(), **(self.environment or environment_tags())}
        if previous is not None:
            self.parent_id = previous.info.run_id
            self.client.update_run(self.parent_id, status=RunState.RUNNING)
            self.client.log_batch(self.parent_id, tags=_tags(process_tags()))
            log.info("MLflow: continuing parent run %s", self.parent_id)
            self._close_completed(info.completed_trials)
            return
        tags[TAG_NOTE] = _sweep_note(info)
        run = self.client.create_run(self.experiment_id, run_name=info.name, tags=tags)
        self.parent_id = run.info.run_id
        params = {**_flatten(info.params or info.config), "space_hash": info.space_hash}
        for start in range(0, len(params), 100):   # MLflow takes 100 params per batch
            chunk = dict(list(params.items())[start:start + 100])
            self.client.log_batch(self.parent_id, params=[
                Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in chunk.items()])
        if info.dataset:
            self._log_dataset(info.dataset)
        self.client.log_text(self.parent_id, yaml.safe_dump(info.config, sort_keys=False),
                             "config.yaml")
        self.client.log_text(self.parent_id,
                             yaml.safe_dump(info.config.get("search_space", {}), sort_keys=False),
                             "search_space.yaml")
        log.info("MLflow: parent run %s in experiment %r (%s)", self.parent_id,
                 self.config.experiment, self.config.display_uri)

    def sweep_ended(self, result, model) -> None:
        metrics = {
            "best_val_accuracy": result.best_val_accuracy, "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss, "n_trials": result.n_completed,
            "n_failed": result.n_failed, "n_skipped": result.n_skipped,
            "sweep_seconds": result.seconds, "best_param_count": result.params,
            "best_flops": result.flops,
        }
        self._log_metrics(self.parent_id, metrics)
        note = self.client.get_run(self.parent_id).data.tags.get(TAG_NOTE, "")
        note = note.split(WINNER_NOTE)[0]   # a resumed sweep's earlier winner is replaced
        self.client.log_batch(self.parent_id, tags=_tags({
            "cnnsearch.best_trial": result.best_trial_id or "",
            TAG_ARCH: result.architecture, TAG_NOTE: note + _result_note(result)}))
        if result.skip_reasons:
            self.client.log_dict(self.parent_id, result.skip_reasons, "skipped_candidates.json")
        self._log_model(model, result)
        self.client.set_terminated(self.parent_id, RunState.FINISHED)

    def search_ended(self) -> None:
        """The leaderboard and plots, while the sweep re-trains its winner."""
        table = leaderboard(self.client, self.parent_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "leaderboard.csv"
            table.to_csv(path, index=False)
            self.client.log_artifact(self.parent_id, str(path))
            log_plots(self.client, self.parent_id, table, self.sweep_name)

    def sweep_failed(self, error: BaseException) -> None:
        status = (RunState.KILLED if isinstance(error, KeyboardInterrupt | SystemExit)
                  else RunState.FAILED)
        reason = f"sweep stopped: {_one_line(error)}"
        for trial_id in list(self.children):   # not the trial's failure: a resume re-runs it
            self._end_child(trial_id, RunState.KILLED, reason)
        if self.parent_id is not None and self.owns_parent:
            # a distributed sweep's workers have stopped: a run one of them left open
            # (killed before it could close it) ends with the sweep
            self._kill_running_children("", f"{reason} (its worker did not close the run)")
            self.client.set_tag(self.parent_id, TAG_REASON, _one_line(error))
            self.client.set_terminated(self.parent_id, status)

    # -- a restarted recorder process -----------------------------------------

    def state(self) -> dict:
        """The runs this recorder holds open: what another needs to take them over."""
        return {"parent_id": self.parent_id, "children": dict(self.children),
                "owns_parent": self.owns_parent, "objective": self.objective,
                "sweep_name": self.sweep_name}

    def restore(self, state: dict | None, dead: list[tuple[int, float]]) -> None:
        """Take over from recorder processes that died (``dead``: their pid and start
        time): the open runs of ``state`` go on under this process; a run one of them
        made but never acknowledged (not in ``state``) is deleted, since the event that
        made it is sent again and makes it whole."""
        if state is not None:
            self.parent_id, self.children = state["parent_id"], dict(state["children"])
            self.owns_parent, self.objective = state["owns_parent"], state["objective"]
            self.sweep_name = state["sweep_name"]
        kept = {*self.children.values(), *([self.parent_id] if self.owns_parent else [])}
        host = socket.gethostname()
        for pid, started in dead:
            for run in self.client.search_runs(
                    [self.experiment_id], max_results=10_000,
                    filter_string=(f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = "
                                   f"'{host}' and tags.`{TAG_PID}` = '{pid}'")):
                made_by_it = (run.data.tags.get(TAG_PROCESS_START) == f"{started:.2f}"
                              and run.info.start_time >= int(started * 1000))
                if made_by_it and run.info.run_id not in kept:   # not one it continued
                    self.client.delete_run(run.info.run_id)
                    log.info("MLflow: deleted run %s, begun by the dead recorder", run.info.run_id)
        for run_id in kept - {None}:   # RUNNING (again, if a reader marked them KILLED)
            tags = process_tags()
            if run_id != self.parent_id:
                tags[TAG_STATUS] = TrialState.running
            self.client.update_run(run_id, status=RunState.RUNNING)
            self.client.log_batch(run_id, tags=_tags(tags))

    # -- distributed sweeps ----------------------------------------------------

    def worker_started(self, info) -> None:
        """A worker's trials join the chief's parent run."""
        self.objective, self.owns_parent = info.objective, False
        parent = self._find_parent(info.name, info.space_hash)
        if parent is None or parent.info.status != RunState.RUNNING:
            raise TrackingError(
                f"no running sweep {info.name!r} with this worker's search space and data "
                f"in {self.config.display_uri}: start workers with the chief's config and a "
                "tracking store both reach (tracking=server tracking.uri=...)")
        self.parent_id = parent.info.run_id
        log.info("MLflow: trials join parent run %s", self.parent_id)

    def trial_lost(self, trial_id: str, reason: str) -> None:
        """The chief lost a trial's worker: its open run ends KILLED."""
        if trial_id in self.children:   # a worker that recorded through this recorder
            self._end_child(trial_id, RunState.KILLED, f"worker lost: {reason}")
            return
        self._kill_running_children(f" and tags.`{TAG_TRIAL}` = '{trial_id}'",
                                    f"worker lost: {reason}")

    def _kill_running_children(self, condition: str, reason: str) -> None:
        """End KILLED, with ``reason``, the sweep's trial runs still RUNNING that match
        the search filter ``condition`` ("" for all)."""
        for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=(f"tags.mlflow.parentRunId = '{self.parent_id}' and "
                               f"attributes.status = 'RUNNING'{condition}"),
                max_results=10_000):
            self.client.log_batch(run.info.run_id, tags=_tags({
                TAG_STATUS: TrialState.killed, TAG_REASON: reason}))
            self.client.set_terminated(run.info.run_id, RunState.KILLED)

    # -- trials ----------------------------------------------------------------

    def trial_started(self, trial_id: str, values: dict, candidate) -> None:
        previous = self.children.pop(trial_id, None)
        if previous:  # a retry of the same trial: close the earlier attempt
            self.client.set_terminated(previous, RunState.FAILED)
        arch = candidate.architecture
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{trial_id}",
            tags={"mlflow.parentRunId": self.parent_id, TAG_ROLE: "trial",
                  TAG_TRIAL: trial_id, TAG_STATUS: TrialState.running, TAG_ARCH: arch.summary(),
                  TAG_NOTE: (f"Trial {trial_id}: `{arch.summary()}`, {arch.params:,} "
                             f"parameters, learning rate {candidate.learning_rate:.2g}."),
                  **process_tags(),
                  **({TAG_TRAINED_BY: candidate.trained_by}
                     if getattr(candidate, "trained_by", None) else {})})
        run_id = run.info.run_id
        self.children[trial_id] = run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
        self.client.log_text(run_id, arch.to_json(), "architecture.json")
        self.client.log_text(run_id, _layer_table(arch), "summary.txt")
        self._log_metrics(run_id, {"param_count": arch.params, "flops": arch.flops})

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict, again: bool = False) -> None:
        """One epoch's metrics; ``again``: sent again after a recorder died, perhaps
        recorded already (then not twice)."""
        run_id = self.children.get(trial_id)
        if run_id is None or not logs:
            return
        if again and any(m.step == epoch for m in self.client.get_metric_history(
                run_id, next(iter(logs)))):
            return
        self._log_metrics(run_id, logs, step=epoch)

    def trial_reevaluated(self, trial_id: str, score: float, mean: float) -> None:
        """A top-k re-evaluation's score and the mean the winner is picked on, on the
        trial's (closed) run: its latest attempt's."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'"
            f" and tags.`{TAG_TRIAL}` = '{trial_id}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            self._log_metrics(runs[0].info.run_id, {f"reevaluated_{self.objective}": score,
                                                    f"mean_{self.objective}": mean})

    def trial_ended(self, outcome) -> None:
        run_id = self.children.get(outcome.trial_id)
        if run_id is None:
            return
        # best-epoch values (the per-epoch metrics' latest value is the last epoch's)
        self._log_metrics(run_id, {
            "train_seconds": outcome.train_seconds, "epochs_run": outcome.epochs_run,
            "images_per_second": outcome.images_per_second, "rss_mb": outcome.rss_mb,
            "best_val_accuracy": outcome.best_val_accuracy,
            f"best_{self.objective}": outcome.score})
        status = (RunState.FINISHED if outcome.status == TrialState.completed
                  else RunState.FAILED)
        # a failed trial's reason, or why a completed one trained fewer epochs (pruned, budget)
        self._end_child(outcome.trial_id, status, outcome.reason or outcome.stopped_early)

    # -- helpers ---------------------------------------------------------------

    def _end_child(self, trial_id: str, status: str, reason: str | None) -> None:
        run_id = self.children.pop(trial_id)
        tags = {TAG_STATUS: {RunState.FINISHED: TrialState.completed,
                            RunState.FAILED: TrialState.failed}.get(status, TrialState.killed)}
        if reason:
            tags[TAG_REASON] = reason[:5000]
        self.client.log_batch(run_id, tags=_tags(tags))
        self.client.set_terminated(run_id, status)

    def _log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        """All metrics of one moment in one call."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()
                   if isinstance(v, int | float | np.floating | np.integer) and v is not None]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def _log_dataset(self, dataset: dict) -> None:
        """The data set as the sweep run's input (the UI's Dataset column)."""
        entity = Dataset(name=dataset["name"], digest=dataset["digest"], source_type="local",
                         source=json.dumps({"uri": dataset["source"]}),
                         profile=json.dumps(dataset["profile"]))
        self.client.log_inputs(self.parent_id, datasets=[DatasetInput(
            entity, tags=[InputTag("mlflow.data.context", "training")])])

    def _close_completed(self, completed: dict[str, dict[str, float]]) -> None:
        """Close FINISHED the run of each trial keras-tuner completed whose run a kill left
        unfinished (killed after keras-tuner saved the trial, before the run was closed)."""
        children = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
            order_by=["attributes.start_time DESC"], max_results=10_000)
        finished = {run.data.tags.get(TAG_TRIAL) for run in children
                    if run.info.status == RunState.FINISHED}
        for trial_id, metrics in completed.items():
            runs = [run for run in children if run.data.tags.get(TAG_TRIAL) == trial_id]
            if trial_id in finished or not runs:
                continue
            run_id = runs[0].info.run_id   # its latest attempt
            self._log_metrics(run_id, metrics)
            self.client.log_batch(run_id, tags=_tags({
                TAG_STATUS: TrialState.completed,
                TAG_REASON: "closed on resume: keras-tuner had completed the trial when the "
                            "sweep's process stopped"}))
            self.client.set_terminated(run_id, RunState.FINISHED)
            log.info("MLflow: closed trial %s's run %s (completed before the stop)",
                     trial_id, run_id)

    def _find_parent(self, name: str, space_hash: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP}` = '{name}' "
                           f"and tags.`{TAG_HASH}` = '{space_hash}'"),
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def _log_model(self, model: keras.Model, result) -> None:
        """Log the final model as the sweep's MLflow model (Keras flavour) and register it."""
        sample = np.zeros((1, *model.input_shape[1:]), dtype="float32")
        signature = ModelSignature(   # float32 batches in, class probabilities out
            Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
            Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]))]))
        mlflow.set_tracking_uri(self.config.tracking_uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)   # else experiment 0 gets it
        self._fail_pending_models()
        info = Model.log(artifact_path=None, name="model", flavor=_KerasFlavor,
                         run_id=self.parent_id, model=model, signature=signature,
                         input_example=sample,
                         pip_requirements=model_requirements(), validate_serving_input=False,
                         tags={TAG_SWEEP: result.name})
        tags = {TAG_SWEEP: result.name, "architecture": result.architecture}
        if result.test_accuracy is not None:
            tags["test_accuracy"] = f"{result.test_accuracy:.4f}"
        version = self.client.create_model_version(
            self._registered_model(), f"models:/{info.model_id}", run_id=self.parent_id,
            tags=tags, model_id=info.model_id)
        log.info("MLflow: logged model %s, registered as %s version %s", info.model_id,
                 version.name, version.version)

    def _registered_model(self) -> str:
        """``tracking.registered_model``, created if new (another sweep may do so too)."""
        name = self.config.registered_model
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException:   # created by another sweep a moment ago
                self.client.get_registered_model(name)
        return name

    def _fail_pending_models(self) -> None:
        """A model whose logging a killed process left half-done is marked FAILED."""
        pending = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"source_run_id = '{self.parent_id}'")
        for model in pending:
            if model.status == LoggedModelStatus.PENDING:
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)


class _KerasFlavor:
    """``mlflow.keras`` for ``Model.log``, with its model folder made before it is written.

    MLflow 3.17's Keras flavour saves the input example before it creates the folder, so
    ``mlflow.keras.log_model(..., input_example=...)`` fails; ``validate_serving_input``
    (loading the model again in this process to check the example) is ``Model.log``'s
    option, not the flavour's.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_requirements() -> list[str]:
    """Keras and its backend package, pinned: what the logged model needs to load.

    Given explicitly: MLflow would otherwise infer them by loading the model in a fresh
    process (several seconds) and may fall back to Keras alone (no backend).
    """
    import keras

    backend = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
        keras.backend.backend())
    pins = []
    for package in filter(None, ("keras", backend)):
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists and ranges ``{min, max}`` stay JSON."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "min" not in value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def _tags(values: dict[str, str]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in values.items()]


def _sweep_note(info) -> str:
    """The sweep run's description: what it searches and where its pieces are."""
    config = info.config
    tuner, data = config.get("tuner", {}), config.get("data", {})
    budget = tuner.get("max_seconds")
    limits = [f"at most {info.max_trials} trials" if info.max_trials else "",
              f"a {budget:g} s budget" if budget else ""]
    return (f"cnnsearch sweep **{info.name}**: {tuner.get('name', '?')} search of CNNs on "
            f"{data.get('name', '?')} ({', '.join(filter(None, limits)) or 'no limit'}), "
            f"ranking trials by {'highest' if info.maximize else 'lowest'} {info.objective}. "
            "Each trial is a nested run; config.yaml, search_space.yaml, leaderboard.csv and "
            "plots/ are this run's artifacts; the final model is its logged model `model`.")


def _result_note(result) -> str:
    test = "-" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    val = "-" if result.best_val_accuracy is None else f"{result.best_val_accuracy:.4f}"
    return (f"{WINNER_NOTE}trial {result.best_trial_id}, `{result.architecture}`, "
            f"{result.params:,} parameters; val accuracy {val}, test accuracy {test} after "
            f"the final fit. {result.n_completed} trials completed, {result.n_failed} failed, "
            f"{result.n_skipped} candidates skipped.")


def _layer_table(arch) -> str:
    lines = [arch.summary(), "", f"{'layer':<16}{'kind':<14}{'output':<18}{'params':>10}"
             f"{'FLOPs':>14}"]
    for layer in arch.layers():
        shape = "x".join(map(str, layer.output_shape))
        lines.append(f"{layer.name:<16}{layer.kind:<14}{shape:<18}{layer.params:>10,}"
                     f"{layer.flops:>14,}")
    lines.append(f"{'total':<48}{arch.params:>10,}{arch.flops:>14,}")
    return "\n".join(lines) + "\n"


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(str(error))}"[:5000]

