"""The ``cnnsearch`` console script.

Each subcommand is a Hydra application over the same config tree (conf/), so every
Hydra habit works: ``key=value`` overrides, ``-m`` multirun, ``--cfg job``,
``--help``, ``experiment=...`` presets. Errors a user can fix are printed as one
line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
COMMAND_HELP = {
    "sweep": "search CNN architectures with keras-tuner (the main job)",
    "results": "leaderboard of the latest sweep (or results.sweep=<run id>), CSV too",
    "export": "the winner to .keras, SavedModel, ONNX or TFLite (export.format=...|all)",
    "ui": "MLflow UI over the same store (ui.host, ui.port)",
    "server": "an MLflow tracking server on PostgreSQL here (server.port), for many workers",
}
USAGE = """usage: cnnsearch <command> [hydra overrides] [hydra flags]

Search convolutional network architectures with Keras, keras-tuner, Hydra and MLflow.

commands:
{commands}

examples:
  cnnsearch sweep                                   default sweep on the bundled digits data
  cnnsearch sweep search_space=small tuner.max_trials=5 training.epochs=2
  cnnsearch sweep -m tuner=random,hyperband seed=0,1
  cnnsearch sweep --cfg job                         print the composed config, run nothing
  cnnsearch sweep --help                            every config group and key
  cnnsearch results results.top=10 results.csv=leaderboard.csv
  cnnsearch export export.format=all                every format, each checked
  cnnsearch ui                                      http://127.0.0.1:5000
  cnnsearch sweep distributed.workers=2             2 trials at once
  cnnsearch server                                  MLflow on PostgreSQL, http://127.0.0.1:5001

options:
  -h, --help     show this message
  --version      show the version
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``cnnsearch <command> ...`` to the command's Hydra application."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        commands = "\n".join(f"  {name:<8} {text}" for name, text in COMMAND_HELP.items())
        print(USAGE.format(commands=commands))
        return 0
    if argv[0] == "--version":
        print(f"cnnsearch {version('cnnsearch')}")
        return 0
    command = argv[0]
    if command not in COMMAND_HELP:
        return _fail(f"unknown command {command!r}; choose from {', '.join(COMMAND_HELP)}")
    quiet_libraries()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach us raw; we print them in one line
    sys.argv = [f"cnnsearch-{command}", *whole_space_values(argv[1:])]
    try:
        _hydra_app(command)()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the open MLflow runs are already KILLED
        print("cnnsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted into user errors and bugs below
        message = user_message(error)
        if message is None:
            raise
        return _fail(message)
    return 0


def quiet_libraries() -> None:
    """No TensorFlow C++ chatter, and no MLflow progress bar on stderr for every artifact
    it downloads (with tqdm installed): noise around our one-line messages."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def whole_space_values(args: list[str]) -> list[str]:
    """``search_space.KEY=VALUE`` replaces the key whatever form the preset gave it.

    Hydra merges an override into the preset's value, and a range cannot merge into a
    list (nor a list into a range), so the override becomes Hydra's delete-and-add.
    Sub-keys (``search_space.dropout.max=0.3``) and Hydra's own ``~``/``+`` forms pass.
    """
    from cnnsearch.search.config import AUGMENTATION_KEYS, SPACE_KEYS

    whole = {*SPACE_KEYS, *(f"augmentation.{key}" for key in AUGMENTATION_KEYS)}
    rewritten = []
    for arg in args:
        key, equals, value = arg.partition("=")
        name = key.removeprefix("search_space.")
        if equals and name != key and name in whole:
            rewritten += [f"~{key}", f"+{key}={value}"]
        else:
            rewritten.append(arg)
    return rewritten


def _hydra_app(command: str):
    """The Hydra application for a command (imported late: --help stays fast)."""
    import hydra
    from omegaconf import DictConfig

    from cnnsearch.search.app.config import register_configs

    register_configs()

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def app(cfg: DictConfig) -> None:
        from cnnsearch.search.app import commands
        from cnnsearch.search.app.console import configure_logging

        configure_logging()
        from cnnsearch.search.errors import UserError
        from cnnsearch.tracking.config import TrackingError

        try:
            commands.COMMANDS[command](cfg)
        except (UserError, TrackingError) as error:  # exit before Hydra adds its own lines
            raise SystemExit(_fail(str(error))) from None

    return app


def user_message(error: Exception) -> str | None:
    """One line for an error the user can fix, None for a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cnnsearch.search.errors import UserError, disk_full

    if isinstance(error, UserError):
        return str(error)
    if message := disk_full(error):
        return message
    if isinstance(error, HydraException | OmegaConfBaseException):
        parts = []
        for exc in (error, error.__cause__):
            if exc is None:
                continue
            text = str(exc).split("\nConfig search path")[0]
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            lines = [line for line in lines if not line.startswith(
                ("full_key:", "reference_type", "object_type", "To append"))]
            parts.append(" ".join(lines))
        return "config error: " + " | ".join(parts) + _allowed_keys(error.__cause__)
    return None


def _allowed_keys(error: BaseException | None) -> str:
    """'; allowed keys: ...' for an unknown-key error, else ''."""
    import dataclasses

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(error, ConfigAttributeError | ConfigKeyError):
        return ""
    if dataclasses.is_dataclass(error.object_type):
        keys = [f.name for f in dataclasses.fields(error.object_type)]
    elif (error.full_key or "").startswith("search_space."):
        from cnnsearch.search.config import AUGMENTATION_KEYS, SPACE_KEYS

        keys = (list(AUGMENTATION_KEYS) if error.full_key.startswith("search_space.augmentation.")
                else [*SPACE_KEYS, "augmentation", "max_params"])
    else:
        return ""
    return f"; allowed keys: {', '.join(keys)}"


def _fail(message: str) -> int:
    print(f"cnnsearch: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
