"""The Python API: ``cnnsearch sweep``, ``results`` and ``export`` from a notebook or a
script, with the same overrides meaning the same thing (Hydra's compose API builds the
config the CLI would), and their results returned instead of printed.

    import cnnsearch
    result = cnnsearch.sweep(["search_space=small", "tuner.max_trials=5"])
    result.leaderboard.head()

Errors a user can fix raise ``UserError`` (or ``TrackingError``) with the one line the
CLI would print.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pandas as pd
from omegaconf import DictConfig

from cnnsearch.search.app import commands
from cnnsearch.search.app.cli import CONF_DIR, quiet_libraries, user_message, whole_space_values
from cnnsearch.search.app.config import register_configs
from cnnsearch.search.config import Role
from cnnsearch.search.errors import UserError
from cnnsearch.search.events import SweepResult


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The config tree composed with ``overrides``, as ``cnnsearch <command>`` composes it."""
    from hydra import compose as compose_config
    from hydra import initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3",
                                   job_name="cnnsearch"):
            return compose_config("config", overrides=whole_space_values(list(overrides)))
    except Exception as error:   # noqa: BLE001 - a bad override: the CLI's one line
        message = user_message(error)
        if message is None:
            raise
        raise UserError(message) from None


def sweep(overrides: Iterable[str] = ()) -> SweepResult:
    """Run one sweep, as ``cnnsearch sweep OVERRIDES`` does (progress on stderr).

    Returns:
        The sweep's result: the winner (``best_trial_id``, ``best_values``,
        ``architecture``, ``test_accuracy`` ...), ``model_path``, ``run_id`` (the MLflow
        parent run) and ``leaderboard`` (a DataFrame; None with ``tracking=none``).
    """
    started = time.monotonic()   # budget.seconds counts from the call
    overrides = list(overrides)
    quiet_libraries()
    cfg = compose(overrides)
    if cfg.distributed.role == Role.worker:   # it has no result: the chief holds it
        raise UserError("cnnsearch.sweep runs a sweep or its chief, not a worker "
                        "(distributed.role=worker): start workers with the CLI")
    result = commands.sweep_command(cfg, overrides, show=False, started=started)
    if result.run_id is not None:
        result.leaderboard = results([*overrides, f"results.sweep={result.run_id}"])
    return result


def results(overrides: Iterable[str] = ()) -> pd.DataFrame:
    """The leaderboard ``cnnsearch results OVERRIDES`` prints, as a DataFrame (every
    trial, best first; ``results.csv`` writes it too)."""
    quiet_libraries()
    return commands.results_command(compose(overrides), show=False)


def export(overrides: Iterable[str] = ()) -> dict:
    """Export the winner as ``cnnsearch export OVERRIDES`` does; the manifest of what
    was written (per format: path, bytes, parity with the trained model)."""
    quiet_libraries()
    return commands.export_command(compose(overrides), show=False)
