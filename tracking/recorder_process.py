"""The MLflow recorder in a process of its own: the sweep's process never waits on MLflow.

Importing MLflow, opening the store and every write take seconds of Python; here they
run beside the sweep, on another core: the child imports MLflow (and opens a store that
already exists, which writes nothing) while the sweep starts Keras. The sweep sends each
event down a pipe and goes on; these calls wait for the recorder:

- :meth:`RecorderProcess.check`, once the config is valid: a server answers, else a
  one-line ``TrackingError`` stops the sweep before its data is loaded;
- :meth:`RecorderProcess.open`, once the data is loaded: the store is created if new and
  usable, else a one-line ``TrackingError`` stops the sweep before any training (a bad
  config or data set writes nothing);
- ``trial_started``: the trial's run exists before it trains, so a kill cannot leave a
  completed trial without a run;
- ``sweep_ended``: the model is logged and every run closed before the command ends;
- ``sweep_failed``: the runs are closed (KILLED or FAILED).

An error while recording is raised in the sweep at the next of these. The recorder
ignores Ctrl-C and SIGTERM (the sweep tells it how it ended); if the sweep's process
dies without a word, its end of the pipe closes and the recorder closes the runs it
opened KILLED (a distributed worker's runs are left to its chief). The recorder sees no
GPU and uses one CPU thread: it loads Keras only for the model's MLflow flavour, and logs
the final model from the file the sweep saved (``search.events.BEST_MODEL_FILE``).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from cnnsearch.search.errors import disk_full
from cnnsearch.search.events import BEST_MODEL_FILE
from cnnsearch.tracking.config import TrackingConfig, TrackingError
from cnnsearch.tracking.environment import environment_tags

log = logging.getLogger(__name__)

STOP = "stop"
ENDINGS = ("sweep_ended", "sweep_failed", STOP)
# the recorder's own Keras (for the model's flavour) stays off the GPUs and on one thread
QUIET_KERAS = {"CUDA_VISIBLE_DEVICES": "-1", "JAX_PLATFORMS": "cpu",
               "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


class RecorderProcess:
    """A sweep observer that hands every event to an ``MlflowRecorder`` in a child process.

    Args:
        spec: where and under which names to record.
        configure_logging: sets up the child's console logging like the sweep's.
        logs_model: the sweep ends with a model to log (not a distributed worker): the
            child prepares for it while the first trial trains.
    """

    def __init__(self, spec: TrackingConfig, configure_logging: Callable[[], None],
                 logs_model: bool = True) -> None:
        context = multiprocessing.get_context("spawn")   # no copy of a process running TF
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, spec, configure_logging, logs_model),
            name="cnnsearch-mlflow", daemon=True)
        self._process.start()
        child.close()
        self._ids = itertools.count()
        self._ended = False

    def check(self) -> None:
        """Wait until the child has MLflow loaded and any existing store open.

        Raises:
            TrackingError: the tracking server does not answer.
        """
        self._raise(self._call("check"))

    def open(self) -> None:
        """Open the store (created if new) and the experiment: the first write.

        Raises:
            TrackingError: the store cannot be used (its one-line reason).
        """
        self._raise(self._call("open"))

    def close(self) -> None:
        """End the child if no sweep ending did (an error before the sweep started)."""
        if not self._ended and self._process.is_alive():
            self._call(STOP)
        self._process.join(timeout=60)

    # -- events ----------------------------------------------------------------

    def sweep_started(self, info) -> None:
        self._send("sweep_started", info, environment_tags())

    def worker_started(self, info) -> None:
        self._send("worker_started", info, environment_tags())

    def trial_started(self, trial_id: str, values: dict, candidate) -> None:
        # what the record needs, without the search's classes (keras-tuner) in the child
        self._raise(self._call("trial_started", trial_id, dict(values), SimpleNamespace(
            architecture=candidate.architecture, learning_rate=candidate.learning_rate)))

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict) -> None:
        self._send("epoch_ended", trial_id, epoch, dict(logs))

    def trial_ended(self, outcome) -> None:
        self._send("trial_ended", outcome)

    def candidate_skipped(self, reason: str, values: dict) -> None:
        self._send("candidate_skipped", reason, dict(values))

    def trial_lost(self, trial_id: str, reason: str) -> None:
        self._send("trial_lost", trial_id, reason)

    def search_ended(self) -> None:
        self._send("search_ended")

    def sweep_ended(self, result, model) -> None:
        self._raise(self._call("sweep_ended", result, tuple(model.input_shape),
                               tuple(model.output_shape)))

    def sweep_failed(self, error: BaseException) -> None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:   # noqa: BLE001 - an error that cannot travel goes as its text
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self._call("sweep_failed", error)   # already failing: a recording error adds nothing

    # -- the pipe --------------------------------------------------------------

    def _send(self, event: str, *args, request: int | None = None) -> None:
        try:
            self._pipe.send((event, args, request))
        except OSError:
            raise TrackingError("the MLflow recorder process ended unexpectedly") from None

    def _call(self, event: str, *args) -> str | None:
        """Send an event and wait until it is recorded; the recorder's first error, if any."""
        request = next(self._ids)
        self._ended = self._ended or event in ENDINGS
        try:
            self._send(event, *args, request=request)
        except TrackingError as error:
            return str(error)
        return self._reply(request)

    def _reply(self, request: int | None) -> str | None:
        while True:
            try:
                answer, error = self._pipe.recv()
            except (EOFError, OSError):
                return "the MLflow recorder process ended unexpectedly"
            if answer == request:   # earlier answers (an interrupted wait) are dropped
                return error

    @staticmethod
    def _raise(error: str | None) -> None:
        if error:
            raise TrackingError(error)


def _serve(pipe, spec: TrackingConfig, configure_logging: Callable[[], None],
           logs_model: bool) -> None:
    """The child: get ready, open the store when asked, then record each event."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(QUIET_KERAS)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")   # our own lines say what it did
    configure_logging()
    # MLflow logs a failed SQL statement with its traceback; the sweep reports it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # what logging the model needs loads once the first trial trains: earlier, it would
    # slow down the answers the sweep waits for at its start
    keras_loader = threading.Thread(target=_prepare_model_logging, daemon=True)
    from cnnsearch.tracking.runs import MlflowRecorder
    from cnnsearch.tracking.store import open_existing_store

    try:
        client, unusable = open_existing_store(spec), None
    except TrackingError as error:   # reported at check and open
        client, unusable = None, str(error)
    recorder, first_error = None, None
    while True:
        try:
            event, args, request = pipe.recv()
        except EOFError:   # the sweep's process is gone and told nothing
            if recorder is not None and recorder.owns_parent:
                recorder.sweep_failed(SystemExit("the sweep's process ended unexpectedly"))
            logging.shutdown()
            os._exit(0)   # at once: no interpreter teardown (Keras may be half-loaded)
        try:
            if event in ("sweep_started", "worker_started"):
                args, recorder.environment = args[:1], args[1]
            if event in ("check", "open") and unusable:
                raise TrackingError(unusable)
            if event == "open":
                recorder = MlflowRecorder(spec, client=client)
            elif event == STOP:
                if recorder is not None:
                    recorder.sweep_failed(SystemExit("stopped before the sweep ended"))
            elif event != "check":
                if event == "sweep_ended":   # the model as saved in the sweep folder
                    if keras_loader.ident is None:
                        keras_loader.start()
                    keras_loader.join()
                    args = (args[0], SavedModel(Path(args[0].directory) / BEST_MODEL_FILE,
                                                *args[1:]))
                getattr(recorder, event)(*args)
        except Exception as error:   # noqa: BLE001 - the sweep raises it at its next wait
            log.debug("recording %s failed", event, exc_info=True)
            first_error = first_error or _message(error)
        if event in ENDINGS:   # nothing left to do: skip the interpreter's (and TF's) teardown
            logging.shutdown()
            pipe.send((request, first_error))
            os._exit(0)
        if request is not None:
            pipe.send((request, first_error))
            first_error = None
        # a distributed chief trains no trial: it loads Keras during its final fit
        if event in ("trial_started", "search_ended") and logs_model \
                and keras_loader.ident is None:
            keras_loader.start()


def _prepare_model_logging() -> None:
    """Load now what logging the final model loads on first use, so the sweep's last wait
    is short: Keras, GitPython (MLflow's git tags) and the map of installed packages MLflow
    checks the model's requirements against."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    from cnnsearch.search.native_logs import start_keras
    from cnnsearch.tracking.runs import model_requirements

    start_keras()
    import git  # noqa: F401

    warn_dependency_requirement_mismatches(model_requirements())


@dataclass(frozen=True)
class SavedModel:
    """What logging a model needs of it, read from the file the sweep saved: MLflow's
    Keras flavour only calls ``save``, which copies that file (no second save)."""

    path: Path
    input_shape: tuple
    output_shape: tuple

    def save(self, target: str, **_) -> None:
        shutil.copyfile(self.path, target)


def _message(error: Exception) -> str:
    if isinstance(error, TrackingError):
        return str(error)
    if message := disk_full(error):
        return f"MLflow recording failed: {message}"
    text = str(error).strip().splitlines()
    return f"MLflow recording failed: {type(error).__name__}: {text[0] if text else ''}"
