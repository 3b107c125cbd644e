"""Fixtures of the tracking tests: one real 3-trial sweep shared by every fast test, the
console script as a subprocess or in this process, and MLflow clients on tmp stores."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

CNNSEARCH = Path(sys.executable).with_name("cnnsearch")
QUICK = ["experiment=quick", "tuner.max_trials=3", "training.epochs=2", "data.limit=200"]
EXPERIMENT = "digits"
REGISTERED_MODEL = "cnnsearch-digits"

def cli_env() -> dict[str, str]:
    """Environment of console-script subprocesses: quiet TensorFlow, no colours, wide tables."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", NO_COLOR="1", COLUMNS="200")
    return env


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``cnnsearch <args>`` as a subprocess, as a user runs it."""
    return subprocess.run([str(CNNSEARCH), *args], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout, check=False)


def start_cli(*args: str, stderr_path: Path) -> subprocess.Popen:
    """``cnnsearch <args>`` in the background, in its own process group, stderr to a file."""
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen([str(CNNSEARCH), *args], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=cli_env(), start_new_session=True)


def wait_for_text(path: Path, text: str | re.Pattern, process: subprocess.Popen,
                  timeout: float) -> None:
    """Wait until ``text`` (or a match of the pattern) appears in the file ``path`` (a
    background command's stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = path.read_text()
        if text.search(found) if isinstance(text, re.Pattern) else text in found:
            return
        if process.poll() is not None:
            pytest.fail(f"the command exited ({process.returncode}) before printing {text!r}:\n"
                        f"{path.read_text()[-3000:]}")
        time.sleep(0.25)
    pytest.fail(f"{text!r} not printed within {timeout} s:\n{path.read_text()[-3000:]}")


def wait_for_an_epoch(root: Path, process: subprocess.Popen, trial_id: str | None = None,
                      timeout: float = 240) -> None:
    """Wait until a trial (``trial_id``, or any) of the running sweep under ``root`` has
    logged an epoch: its fit is under way. Only once its store exists (the parent run
    announced, or a trial started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = open_experiment(root)
        for run in store.children:
            if trial_id not in (None, run.data.tags.get("cnnsearch.trial_id")):
                continue
            if store.client.get_metric_history(run.info.run_id, "val_accuracy"):
                return
        if process.poll() is not None:
            pytest.fail(f"the command exited ({process.returncode}) before an epoch was logged")
        time.sleep(0.25)
    pytest.fail(f"no epoch of {f'trial {trial_id}' if trial_id else 'a trial'} logged within "
                f"{timeout} s")


def store_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlflow/mlflow.db"


def store_client(root: Path) -> MlflowClient:
    """A client on the local store that ``paths.root=<root>`` uses."""
    return MlflowClient(store_uri(root))


@dataclass
class Store:
    """The runs of one experiment of a store, split by role."""

    client: MlflowClient
    experiment_id: str

    def runs(self, role: str) -> list[Run]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`cnnsearch.role` = '{role}'",
            max_results=1000)

    @property
    def parents(self) -> list[Run]:
        return self.runs("sweep")

    @property
    def children(self) -> list[Run]:
        return self.runs("trial")

    def children_of(self, parent_id: str) -> list[Run]:
        return [run for run in self.children
                if run.data.tags.get("mlflow.parentRunId") == parent_id]


def open_experiment(root: Path, name: str = EXPERIMENT) -> Store:
    client = store_client(root)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} in {root}"
    return Store(client, experiment.experiment_id)


@dataclass
class Swept:
    """A finished sweep made by the real console script."""

    root: Path
    stdout: str
    stderr: str
    store: Store

    @property
    def parent(self) -> Run:
        (parent,) = self.store.parents
        return parent

    @property
    def sweep_dir(self) -> Path:
        (directory,) = (self.root / "sweeps").iterdir()
        return directory


@pytest.fixture(scope="session")
def swept(tmp_path_factory) -> Swept:
    """One 3-trial, 2-epoch sweep on 200 digits images through ``cnnsearch sweep``.

    Every candidate uses sum pooling (the one pooling type Keras has no layer for).
    Shared by every test that only reads the store: none of them may change it.
    """
    root = tmp_path_factory.mktemp("swept")
    done = run_cli("sweep", f"paths.root={root}", *QUICK, "seed=1",   # 1- and 2-block trials
                   "search_space.pooling=[sum]")
    assert done.returncode == 0, done.stderr[-5000:]
    return Swept(root, done.stdout, done.stderr, open_experiment(root))


@pytest.fixture
def cli_in_process(monkeypatch, capfd):
    """``search.app.cli.main`` (what the console script calls) in this process: the same code
    without paying TensorFlow's import per call. Returns (exit code, stdout, stderr)."""
    import mlflow
    from hydra.core.global_hydra import GlobalHydra

    from cnnsearch.search.app.cli import main

    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    tracking_uri = mlflow.get_tracking_uri()
    monkeypatch.setattr(sys, "argv", list(sys.argv))   # main rewrites it for Hydra
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")        # main sets it
    _keep_absl_stream_open(monkeypatch)

    def run(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # errors found inside the Hydra app exit from there
            code = exit_.code
        finally:
            GlobalHydra.instance().clear()
        out, err = capfd.readouterr()
        return code, out, err

    yield run
    logger.handlers[:] = handlers
    logger.setLevel(level)
    mlflow.set_tracking_uri(tracking_uri)


def _keep_absl_stream_open(monkeypatch) -> None:
    """Hydra's logging set-up closes every logging handler; absl's (TensorFlow's) handler
    then closes its stream unless that stream is the current ``sys.stderr``. Imported
    while pytest collected the tests, it writes to pytest's own capture file, whose
    closing breaks the whole session ("I/O operation on closed file"). Point it at the
    stream this test captures, for the duration of the test."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    monkeypatch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.stderr)


@pytest.fixture(scope="session")
def scratch_client(tmp_path_factory) -> MlflowClient:
    """A client on an empty sqlite store, for runs made by hand; each test makes its own
    experiment (see ``new_experiment``)."""
    root = tmp_path_factory.mktemp("scratch")
    (root / "mlflow").mkdir()
    return store_client(root)


def new_experiment(client: MlflowClient) -> str:
    return client.create_experiment(f"test-{uuid.uuid4().hex[:12]}")


def stop_tree(process: subprocess.Popen, timeout: float = 60) -> None:
    """End a background command and everything it started (its process group), for good."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.NoSuchProcess:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        for leftover in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.send_signal(sig)
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        if not alive:
            break
    process.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
