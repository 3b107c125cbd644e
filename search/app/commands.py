"""The subcommands' bodies: composed config in, typed specs to the library, a report out.

This is the edge where the DictConfig stops; everything below takes plain values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnnsearch.models.native_logs import start_keras
from cnnsearch.search.app.config import Config
from cnnsearch.search.app.console import console, report
from cnnsearch.search.config import DataConfig, Role
from cnnsearch.search.errors import UserError
from cnnsearch.search.events import SweepResult
from cnnsearch.tracking.config import TrackingConfig, TrackingMode, redact

# Keras, TensorFlow and MLflow load inside the commands that need them: `cnnsearch ui`
# starts without them.

log = logging.getLogger("cnnsearch")


def typed(cfg: DictConfig) -> Config:
    """The composed config as its dataclasses (search/app/config.py), interpolations
    resolved."""
    return OmegaConf.to_object(cfg)


def sweep_spec(cfg: DictConfig):
    """Turn the composed config into the sweep's typed ``SweepSpec``."""
    from cnnsearch.search.spec import SweepSpec

    config = typed(cfg)
    return SweepSpec(
        data=config.data,
        search_space=config.search_space,
        tuner=config.tuner,
        training=config.training,
        root=config.paths.root,
        name=config.sweep.name,
        resume=config.sweep.resume,
        seed=config.seed,
        final_fit=config.final_fit,
        config=_without_credentials(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)),
        distributed=config.distributed,
        budget=config.budget,
        reevaluate=config.reevaluate,
    )


def _budget(spec, data, started: float | None):
    """The sweep's total budget, begun at ``started`` (default: this process's start),
    once one epoch of the first candidate is known to fit (None: no budget)."""
    if spec.budget.seconds is None or spec.distributed.role == Role.worker:
        return None
    import time

    import psutil

    from cnnsearch.search.budget import Budget, check_one_epoch_fits
    from cnnsearch.search.sweep import first_candidate

    if started is None:
        started = time.monotonic() - (time.time() - psutil.Process().create_time())
    budget = Budget(spec.budget.seconds, started)
    model = first_candidate(spec, data)
    if model is not None:
        check_one_epoch_fits(budget, model, data, spec.training.batch_size)
    return budget


def _overrides() -> list[str]:
    """The command line's overrides (the workers this host starts get them too)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _without_credentials(config: dict) -> dict:
    """The config as recorded (sweep.json, MLflow): a password in tracking.uri is masked."""
    tracking = config.get("tracking") or {}
    if tracking.get("uri"):
        tracking["uri"] = redact(tracking["uri"])
    return config


def tracking_spec(cfg: DictConfig) -> TrackingConfig:
    """The ``tracking`` group, checked."""
    tracking = typed(cfg).tracking
    if tracking.mode == TrackingMode.server and not tracking.uri:
        raise UserError("tracking=server needs tracking.uri=http://host:port")
    return tracking


def sweep_command(cfg: DictConfig, overrides: list[str] | None = None,
                  show: bool = True, started: float | None = None) -> SweepResult | None:
    """``cnnsearch sweep``: run one sweep and print its summary table (a worker: train
    the trials its chief hands out). ``overrides``: what composed ``cfg``, for the
    workers this host starts (default: the command line's); ``show``: print the table;
    ``started``: when ``budget.seconds`` began (``time.monotonic()``; default: when
    this process started).

    In order: every value is checked (nothing starts on a bad one); this host's worker
    processes and the MLflow recorder start, so their start-ups overlap this process's
    Keras; an unreachable server fails before the data is loaded; the store's first
    write waits until the data is good.
    """
    from cnnsearch.search.spec import validate

    overrides = _overrides() if overrides is None else overrides
    spec = sweep_spec(cfg)
    validate(spec)   # a bad value: one line, before anything starts
    distributed, tracking = spec.distributed, tracking_spec(cfg)
    if distributed.role == Role.worker and distributed.workers > 1:
        return _local_workers(distributed, overrides)
    with contextlib.ExitStack() as stack:
        pool = _start_workers(distributed, overrides, tracking, stack)
        spec = dataclasses.replace(spec, distributed=pool.config if pool else distributed)
        recorder = _start_recorder(tracking, distributed, stack)
        start_keras()
        from cnnsearch.search.data.datasets import load_dataset
        from cnnsearch.search.progress import ProgressDisplay
        from cnnsearch.search.sweep import run_sweep, run_worker

        observers: list = [ProgressDisplay(console,
                                           live=False if distributed.enabled else None)]
        if recorder is not None:   # an unreachable server fails before any data is loaded
            recorder.check()
        data = load_dataset(spec.data, spec.seed)
        budget = _budget(spec, data, started)
        if recorder is not None:   # the store's first write: the config and data are good
            recorder.open()
            observers.append(recorder)
            if pool is not None and pool.relay is not None:   # the workers' trials too
                pool.relay.attach(recorder)
        interrupted = stack.enter_context(_sigterm_as_interrupt())
        if distributed.role == Role.worker:
            run_worker(spec, [*observers, interrupted], data=data)
            return None
        result, _ = run_sweep(spec, [*observers, interrupted], data=data, workers=pool,
                              budget=budget)
        result.run_id = recorder.parent_run_id if recorder is not None else None
    if show:
        report.print(summary_table(result))
    return result


def _start_workers(distributed, overrides: list[str], tracking: TrackingConfig,
                   stack: contextlib.ExitStack):
    """This host's worker processes of a chief (None: none), stopped when ``stack`` ends.

    Started before this process imports Keras, so their start-ups overlap; with
    tracking on, they record through this process's recorder (one per host).
    """
    if not distributed.enabled or distributed.role == Role.worker:
        return None
    from cnnsearch.search.distributed.relay import EventRelay
    from cnnsearch.search.distributed.workers import WorkerPool, check_listen, with_port

    check_listen(distributed)   # a port in use: one line, nothing touched yet
    if not distributed.worker_processes:
        return None
    pool = WorkerPool(overrides, with_port(distributed),
                      EventRelay() if tracking.enabled else None)
    pool.start()
    stack.callback(pool.stop)
    return pool


def _start_recorder(tracking: TrackingConfig, distributed, stack: contextlib.ExitStack):
    """The sweep's MLflow observer (None with tracking=none), closed when ``stack`` ends:
    a recorder process, started now so that MLflow's start-up overlaps Keras's, or, in a
    worker started by a chief, the relay to the chief's."""
    if not tracking.enabled:
        return None
    if distributed.role == Role.worker:
        from cnnsearch.search.distributed.relay import RelayedRecorder

        if (relayed := RelayedRecorder.from_env()) is not None:
            stack.callback(relayed.close)
            return relayed
    from cnnsearch.search.app.console import configure_logging
    from cnnsearch.tracking.recorder_process import RecorderProcess

    recorder = RecorderProcess(tracking, configure_logging,
                               logs_model=distributed.role != Role.worker)
    stack.callback(recorder.close)
    return recorder


def _local_workers(distributed, overrides: list[str]) -> None:
    """``distributed.role=worker distributed.workers=N``: N worker processes here for a
    chief elsewhere, until they end."""
    from cnnsearch.search.distributed.workers import WorkerPool

    pool = WorkerPool(overrides, distributed)
    with _sigterm_as_interrupt():
        pool.start()
        try:
            failed = [w.name for w in pool.wait()]
        finally:
            pool.stop()
    if failed:
        raise UserError(f"{len(failed)} of {distributed.workers} worker processes "
                        f"failed ({', '.join(failed)}; their last lines are above)")


def results_command(cfg: DictConfig, show: bool = True) -> pd.DataFrame:
    """``cnnsearch results``: the leaderboard of a sweep, printed (``show``) and
    optionally as CSV."""
    from cnnsearch.tracking.results import latest_sweep, leaderboard
    from cnnsearch.tracking.store import experiment_id, open_store, reconcile_stale_runs

    typed(cfg).results.validate()
    tracking = tracking_spec(cfg)
    if not tracking.enabled:
        raise UserError("cnnsearch results reads MLflow; it cannot work with tracking=none")
    if not tracking.store_exists:  # read only: create nothing
        raise UserError(f"no sweep yet: there is no MLflow store in {tracking.store_dir}; "
                        "run `cnnsearch sweep` first")
    name = cfg.results.experiment or tracking.experiment
    client = open_store(tracking)
    exp_id = experiment_id(client, dataclasses.replace(tracking, experiment=name), create=False)
    if exp_id is None:
        raise UserError(f"no sweep yet: MLflow experiment {name!r} does not exist in "
                        f"{tracking.display_uri}")
    reconcile_stale_runs(client, [exp_id])
    if cfg.results.sweep == "latest":
        parent = latest_sweep(client, [exp_id])
        if parent is None:
            raise UserError(f"no sweep yet in experiment {name!r}; run `cnnsearch sweep` first")
    else:
        try:
            parent = client.get_run(cfg.results.sweep)
        except Exception:  # noqa: BLE001 - MLflow raises its own error type per store
            raise UserError(f"results.sweep={cfg.results.sweep} is not a run in "
                            f"{tracking.display_uri}") from None
    table = leaderboard(client, parent.info.run_id)
    if show:
        report.print(leaderboard_table(table.head(cfg.results.top), parent.info.run_name))
    if cfg.results.csv:
        table.to_csv(cfg.results.csv, index=False)
        log.info("wrote %d rows to %s", len(table), cfg.results.csv)
    return table


def ui_command(cfg: DictConfig) -> int:
    """``cnnsearch ui``: the MLflow UI over the configured store, until Ctrl-C."""
    typed(cfg).ui.validate()
    tracking = tracking_spec(cfg)
    if tracking.mode != TrackingMode.local:
        raise UserError(f"cnnsearch ui serves the local store; with tracking={tracking.mode} "
                        "open the server's own UI")
    tracking.store_dir.mkdir(parents=True, exist_ok=True)
    host, port = cfg.ui.host, cfg.ui.port
    if not _is_loopback(host):
        log.warning("ui.host=%s: the MLflow UI is reachable from other machines", host)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
               tracking.tracking_uri, "--host", host, "--port", str(port), "--workers", "1"]
    # MLflow's background job runner is not used by cnnsearch and slows start and stop.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://{host}:{port}/{_experiment_page(tracking)}"   # before the server opens it
    with subprocess.Popen(command, env=env) as server, _sigterm_as_interrupt():
        try:
            if _wait_until_up(f"http://{host}:{port}/health", server):
                console.print(f"MLflow UI: {url}  (store {tracking.display_uri}; Ctrl-C stops)",
                              soft_wrap=True)   # one line: a wrapped URL cannot be clicked
            return server.wait()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the server too, not orphan it
            server.terminate()
            return 0


def server_command(cfg: DictConfig) -> int:
    """``cnnsearch server``: MLflow over PostgreSQL on this host, until Ctrl-C."""
    from cnnsearch.tracking import server

    config = typed(cfg)
    spec = config.server
    spec.validate()
    bin_dir = server.find_postgres(spec.postgres_bin)
    try:
        import psycopg2  # noqa: F401 - MLflow's PostgreSQL driver
    except ImportError:
        raise UserError("cnnsearch server needs psycopg2: pip install "
                        "'cnnsearch[server]'") from None
    server.check_port_free(spec.port, "server.port")
    if spec.postgres_port is not None:
        server.check_port_free(spec.postgres_port, "server.postgres_port")
    base = Path(config.paths.root).resolve() / "server"
    uri = f"http://{server.HOST}:{spec.port}"
    with _sigterm_as_interrupt(), \
            server.postgres(base, bin_dir, spec.postgres_port or server.free_port()) as pg:
        process = server.mlflow_server(pg.store_uri, base / "artifacts", spec.port)
        try:
            console.print(f"MLflow tracking server: {uri}  (PostgreSQL store in {base}; "
                          f"Ctrl-C stops)\nrecord sweeps to it: cnnsearch sweep tracking=server "
                          f"tracking.uri={uri}", soft_wrap=True)
            code = process.wait()
            raise UserError(f"mlflow server exited with code {code}; see "
                            f"{base / 'mlflow-server.log'}")
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM: both servers stop cleanly
            log.info("stopping the MLflow server and PostgreSQL")
            return 0
        finally:
            server.stop(process)


def _experiment_page(tracking: TrackingConfig) -> str:
    """The UI path of the experiment's runs table ('' before the first sweep)."""
    from cnnsearch.tracking.store import experiment_id, open_store

    if not tracking.store_exists:
        return ""
    exp_id = experiment_id(open_store(tracking), tracking, create=False)
    return "" if exp_id is None else f"#/experiments/{exp_id}/runs?workflowType=machine_learning"


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll ``url`` until it answers; False if the server exits or never answers."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def export_command(cfg: DictConfig, show: bool = True) -> dict:
    """``cnnsearch export``: the winner in the requested formats, each parity-checked;
    the manifest of what was written (printed as a table with ``show``)."""
    import json

    start_keras()
    import keras

    from cnnsearch.search.data.datasets import load_dataset
    from cnnsearch.search.export import (
        ExportSource,
        ExportSpec,
        check_spec,
        export_winner,
        parse_formats,
    )

    tracking = tracking_spec(cfg)
    formats = parse_formats(cfg.export.format)
    if tracking.enabled:
        from cnnsearch.tracking.store import experiment_id, open_store
        from cnnsearch.tracking.winner import find_winner, load_model, log_export

        if not tracking.store_exists:  # read only: create nothing
            raise UserError(f"no finished sweep to export yet: no MLflow store in "
                            f"{tracking.store_dir}; run `cnnsearch sweep` first")
        client = open_store(tracking)
        winner = find_winner(client, experiment_id(client, tracking, create=False),
                             cfg.export.run, cfg.export.model)
        name, config, run_id = winner.sweep_name, winner.config, winner.run_id
        source_uri, test_accuracy = winner.model_uri, winner.test_accuracy
    else:
        folder = _latest_sweep_folder(Path(cfg.paths.root))
        result = json.loads((folder / "result.json").read_text())
        name, config, run_id = folder.name, json.loads(
            (folder / "sweep.json").read_text())["config"], None
        source_uri, test_accuracy = str(folder / "best_model.keras"), result["test_accuracy"]
    directory = Path(cfg.export.dir or Path(cfg.paths.root) / "exports" / name).resolve()
    spec = ExportSpec(formats, directory, cfg.export.opset, cfg.export.quantize,
                      cfg.export.overwrite)
    check_spec(spec)
    if tracking.enabled:
        model = load_model(winner, tracking.tracking_uri)
    else:
        model = keras.saving.load_model(source_uri)
    data = load_dataset(DataConfig(**config["data"]), config["seed"])
    source = ExportSource(model, data.x_test[:256], data.class_names, source_uri, run_id,
                          test_accuracy)
    manifest = export_winner(source, spec)
    if tracking.enabled:
        log_export(client, run_id, directory)
    if show:
        report.print(export_table(manifest, directory))
    return manifest


def export_table(manifest: dict, directory) -> Table:
    """What was written, how big, and how well it matches the trained model."""
    table = Table(title=f"export to {directory}")
    for column in ("format", "file", "bytes", "max |diff|", "top-1 agreement", "seconds"):
        table.add_column(column)
    for fmt, record in manifest["files"].items():
        table.add_row(fmt, record["path"], f"{record['bytes']:,}",
                      f"{record['max_abs_diff']:.1e}", f"{record['top1_agreement']:.2%}",
                      f"{record['export_seconds']:.1f}")
    return table


def _latest_sweep_folder(root) -> Path:
    """With tracking=none, the most recently finished sweep folder under the root."""
    finished = sorted((root / "sweeps").glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    if not finished:
        raise UserError(f"no finished sweep under {root / 'sweeps'}; run `cnnsearch sweep` first")
    return finished[-1].parent


def leaderboard_table(table: pd.DataFrame, title: str) -> Table:
    """A rich table of leaderboard rows."""
    out = Table(title=f"sweep {title}")
    objective = table.attrs.get("objective", "val_accuracy")
    columns = ["rank", "trial", "status", "score", "params", "flops",
               "train_seconds", "pareto", "architecture"]
    if objective != "val_accuracy":
        columns.insert(4, "val_accuracy")
    if table.reevaluated.notna().any():   # a top-k re-evaluation ran
        columns[4:4] = ["reevaluated", "mean_score"]
    for column in columns:
        header = f"best {objective}" if column == "score" else column
        out.add_column(header.replace("_", " "), overflow="fold")
    for _, row in table.iterrows():
        out.add_row(*(_cell(row[c]) for c in columns))
    return out


def _cell(value) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Interrupted:
    """Sweep observer that raises a received SIGTERM again at the next sweep event.

    The handler's own ``KeyboardInterrupt`` is lost when it lands in a finalizer or a
    weakref callback (Python only prints "Exception ignored in ..."; SQLAlchemy runs
    such callbacks all through a sweep), and the sweep would go on as if never told.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def check(self, *_args) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")

    trial_started = epoch_ended = trial_ended = candidate_skipped = check


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM like Ctrl-C, so open runs are closed as KILLED; a second signal (a
    distributed chief stopping its workers as they stop on their own Ctrl-C) does not cut
    short the handling of the first, but is raised again if the first was lost.

    Yields:
        An observer to add last to a sweep's observers (see :class:`_Interrupted`).
    """
    received = _Interrupted()

    def interrupt(signum, frame):
        # while the first is handled (an ``except`` closes the runs), let it finish; a lost
        # one (swallowed in a finalizer, then stuck, e.g. calling a chief that is gone)
        # is raised again
        if received.signum is not None and isinstance(sys.exception(), KeyboardInterrupt):
            return
        received.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def summary_table(result: SweepResult) -> Table:
    """The end-of-sweep table: winner, its size and scores, trial counts, time."""
    table = Table(title=f"sweep {result.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = {
        "best trial": result.best_trial_id,
        "architecture": result.architecture,
        "params": f"{result.params:,}",
        "FLOPs": f"{result.flops:,}",
        "val accuracy": _fmt(result.best_val_accuracy),
        "test accuracy": _fmt(result.test_accuracy),
        "wall time": f"{result.seconds:.1f} s",
        "trials run / failed / skipped":
            f"{result.n_completed} / {result.n_failed} / {result.n_skipped}",
        "folder": result.directory,
    }
    if result.stopped_reason:
        rows["stopped early"] = result.stopped_reason
    for reason, count in list(result.skip_reasons.items())[:5]:
        rows[f"skipped x{count}"] = reason
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


COMMANDS = {"sweep": sweep_command, "results": results_command, "export": export_command,
            "ui": ui_command, "server": server_command}   # what `cnnsearch <command>` runs
