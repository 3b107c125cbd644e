"""Fixtures shared by the search and CLI tests: tiny sweeps, event recorders, the console script."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

def load_space(name: str = "small", data: str = "digits") -> dict:
    """A search_space preset of conf/search_space as a plain dict (a fresh copy), its
    augmentation keys resolved for ``data`` (conf/data/<data>.yaml)."""
    return copy.deepcopy(_composed_space(name, data))


@functools.cache
def _composed_space(name: str, data: str) -> dict:
    from cnnsearch.search.app.api import compose

    config = compose([f"search_space={name}", f"data={data}"])
    return OmegaConf.to_container(config.search_space, resolve=True)


class Recorder:
    """A sweep observer that keeps every event it receives, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def clear(self) -> None:
        self.events.clear()

    def of(self, kind: str) -> list[tuple]:
        """The arguments of every event of one kind."""
        return [args for event, *args in self.events if event == kind]

    @property
    def started(self) -> list[str]:
        """Trial ids in the order their trials started."""
        return [trial_id for trial_id, _, _ in self.of("trial_started")]

    @property
    def outcomes(self) -> list:
        return [outcome for (outcome,) in self.of("trial_ended")]

    def sweep_started(self, info):
        self.events.append(("sweep_started", info))

    def trial_started(self, trial_id, values, candidate):
        self.events.append(("trial_started", trial_id, dict(values), candidate))

    def epoch_ended(self, trial_id, epoch, logs):
        self.events.append(("epoch_ended", trial_id, epoch, dict(logs)))

    def trial_ended(self, outcome):
        self.events.append(("trial_ended", outcome))

    def candidate_skipped(self, reason, values):
        self.events.append(("candidate_skipped", reason, dict(values)))

    def trial_reevaluated(self, trial_id, score, mean):
        self.events.append(("trial_reevaluated", trial_id, score, mean))

    def search_ended(self):
        self.events.append(("search_ended",))

    def sweep_ended(self, result, model):
        self.events.append(("sweep_ended", result, model))

    def sweep_failed(self, error):
        self.events.append(("sweep_failed", error))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def small_space() -> dict:
    """conf/search_space/small.yaml, a fresh copy per test."""
    return load_space("small")


@pytest.fixture
def make_spec(tmp_path):
    """Factory of tiny SweepSpecs under tmp_path: digits (200 training images), 1 epoch.

    Keyword arguments override SweepSpec fields; ``tuner``, ``training`` and
    ``final_fit`` may be dicts of their config fields (``tuner``: 2 trials of random
    search unless it says otherwise).
    """
    from cnnsearch.search.config import DataConfig, FinalFitConfig, TrainingConfig
    from cnnsearch.search.spec import SweepSpec

    def make(search_space: dict | None = None, tuner: dict | None = None,
             training: dict | None = None, final_fit: dict | None = None,
             **fields) -> SweepSpec:
        training = TrainingConfig(**{"epochs": 1, "batch_size": 64,
                                     "early_stopping_patience": None, **(training or {})})
        defaults = dict(data=DataConfig("digits", limit=200), root=str(tmp_path),
                        search_space=search_space or load_space("small"),
                        tuner=retune(None, **(tuner or {})), training=training,
                        final_fit=FinalFitConfig(**(final_fit or {})))
        return SweepSpec(**{**defaults, **fields})

    return make


def retune(tuner, **changes):
    """``tuner`` (None: 2 trials of random search) with ``changes``; a new ``name`` takes
    that tuner's schema, keeping the knobs it shares with the old one."""
    from cnnsearch.search.config import TUNER_CONFIGS, TunerName

    base = dataclasses.asdict(tuner) if tuner is not None else {"max_trials": 2}
    schema = TUNER_CONFIGS[TunerName(changes.get("name", base.get("name", "random")))]
    shared = {f.name for f in dataclasses.fields(schema)} - {"name"}
    return schema(**{k: v for k, v in base.items() if k in shared and k not in changes},
                  **changes)


def replace(spec, **changes):
    """dataclasses.replace for nested spec fields given as dicts (tuner=..., training=...)."""
    if isinstance(changes.get("tuner"), dict):
        changes["tuner"] = retune(spec.tuner, **changes["tuner"])
    for key in ("training", "final_fit"):
        if isinstance(changes.get(key), dict):
            changes[key] = dataclasses.replace(getattr(spec, key), **changes[key])
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="session")
def cnnsearch() -> list[str]:
    """The installed console script next to this interpreter (or ``python -m cnnsearch``)."""
    script = Path(sys.executable).parent / "cnnsearch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cnnsearch"]


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """The environment for console-script subprocesses: quiet TensorFlow, no colours."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", NO_COLOR="1", COLUMNS="200")
    return env


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, blank ones dropped (TensorFlow's C++ noise must not be there)."""
    return [line for line in stderr.splitlines() if line.strip()]


# Prepended to a script run by run_without_cnnsearch: the process cannot import cnnsearch,
# like one where a saved model is deployed. `python -I` drops the working directory,
# PYTHONPATH and user site; this drops the editable install's import hook and checks.
_NO_CNNSEARCH = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
try:
    import cnnsearch
except ImportError:
    pass
else:
    raise SystemExit(f"cnnsearch is importable from {cnnsearch.__file__}: the check is void")
"""


def run_without_cnnsearch(script: str, *args: str, cwd, timeout: float = 300):
    """Run ``script`` in a fresh Python (this venv's packages) that cannot see cnnsearch."""
    return subprocess.run([sys.executable, "-I", "-c", _NO_CNNSEARCH + textwrap.dedent(script),
                           *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
