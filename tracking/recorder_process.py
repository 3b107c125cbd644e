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

An error while recording is raised in the sweep at the next of these; until then the
recorder writes nothing more but the sweep's end (a server that failed once is not
waited on again). A recorder that dies is restarted (see :class:`RecorderProcess`). It
ignores Ctrl-C and SIGTERM (the sweep tells it how it ended); if the sweep's process
dies without a word, its end of the pipe closes and the recorder closes the runs it
opened KILLED (a distributed worker's runs are left to its chief). The recorder sees no
GPU and uses one CPU thread: it loads Keras only for the model's MLflow flavour, and logs
the final model from the file the sweep saved (``search.events.BEST_MODEL_FILE``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from cnnsearch.search.errors import SweepStopped, disk_full, first_line
from cnnsearch.search.events import BEST_MODEL_FILE, trial_record
from cnnsearch.tracking.config import TrackingConfig, TrackingError, redact
from cnnsearch.tracking.environment import environment_tags

log = logging.getLogger(__name__)


class RecorderLost(TrackingError, SweepStopped):
    """The MLflow recorder process keeps dying: the sweep stops (a resume goes on)."""

STOP = "stop"
ENDINGS = ("sweep_ended", "sweep_failed", STOP)
MAX_RESTARTS = 3   # restarts in a row of a recorder that died with no new event recorded
# the recorder's own Keras (for the model's flavour) stays off the GPUs and on one thread
QUIET_KERAS = {"CUDA_VISIBLE_DEVICES": "-1", "JAX_PLATFORMS": "cpu",
               "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


class RecorderProcess:
    """A sweep observer that hands every event to an ``MlflowRecorder`` in a child process.

    The child acknowledges each event once it is recorded, with the runs it holds open.
    A child that dies (the OOM killer's first pick, with Keras loaded) is noticed at
    once, by a watching thread or by the pipe, and restarted: the new child takes over
    the open runs, deletes a run the dead one had begun but not acknowledged, and is sent
    again every event not acknowledged, so nothing is lost and nothing recorded twice.
    Dead again after ``MAX_RESTARTS`` restarts in a row with no new event recorded, the
    sweep stops in one line (``RecorderLost``), its running trial handed back, not failed.

    Args:
        config: where and under which names to record.
        configure_logging: sets up the child's console logging like the sweep's.
        logs_model: the sweep ends with a model to log (not a distributed worker): the
            child prepares for it while the first trial trains.
    """

    def __init__(self, config: TrackingConfig, configure_logging: Callable[[], None],
                 logs_model: bool = True) -> None:
        self._args = (config, configure_logging, logs_model)
        self._lock = threading.RLock()   # the pipe and the child, for the watcher too
        self._ids = itertools.count()
        self._unacked: dict[int, tuple[str, tuple, bool]] = {}   # in the order sent
        self._replies: dict[int, str | None] = {}
        self._state: dict | None = None   # the child's open runs, as last acknowledged
        self._dead: list[tuple[int, float]] = []   # (pid, start time) of dead children
        self._opened = False
        self._ended = False    # an ending was acknowledged: the child exits by itself
        self._deaths = 0       # in a row, with no new event recorded in between
        self._first_new = 0    # id of the first event sent after the latest restart
        self.lost: str | None = None   # why recording gave up
        self._leaving = False  # this process ends: its child must not be restarted
        self._spawn()
        atexit.register(self._leave)   # runs before multiprocessing joins its children
        threading.Thread(target=self._watch, name="cnnsearch-mlflow-watch",
                         daemon=True).start()

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
        self._opened = True

    @property
    def parent_run_id(self) -> str | None:
        """The sweep's MLflow parent run, once the child has made or continued it."""
        return (self._state or {}).get("parent_id")

    def close(self) -> None:
        """End the child if no sweep ending did (an error before the sweep started; before
        :meth:`open` it has written nothing, so it is not waited for)."""
        with self._lock:
            self._leaving = True   # the watcher restarts no child from now on
            if not self._opened:
                self._process.kill()
            elif not self._ended and self.lost is None and self._process.is_alive():
                self._call(STOP)
            process = self._process
        process.join(timeout=60)
        atexit.unregister(self._leave)

    def _leave(self) -> None:
        """This process exits without ``close``: its end of the pipe closes, as when it is
        killed, so the child closes the runs it opened and exits (it ignores SIGTERM)."""
        with self._lock:
            self._leaving = True
            self._pipe.close()

    # -- events ----------------------------------------------------------------

    def sweep_started(self, info) -> None:
        self._send("sweep_started", info, environment_tags())

    def worker_started(self, info) -> None:
        self._send("worker_started", info, environment_tags())

    def trial_started(self, trial_id: str, values: dict, candidate) -> None:
        self._raise(self._call("trial_started", trial_id, dict(values),
                               trial_record(candidate)))

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict) -> None:
        self._send("epoch_ended", trial_id, epoch, dict(logs))

    def trial_ended(self, outcome) -> None:
        self._send("trial_ended", outcome)

    def trial_lost(self, trial_id: str, reason: str) -> None:
        self._send("trial_lost", trial_id, reason)

    def trial_reevaluated(self, trial_id: str, score: float, mean: float) -> None:
        self._send("trial_reevaluated", trial_id, score, mean)

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

    def _send(self, event: str, *args, reply: bool = False) -> int:
        """Queue an event for the child (sent again to a restarted one until acknowledged).

        Raises:
            RecorderLost: the child cannot be kept alive.
        """
        ending = event in ENDINGS
        with self._lock:
            if self.lost is not None and not (ending and self._last_try()):
                raise RecorderLost(self.lost)
            request = next(self._ids)
            self._unacked[request] = (event, args, reply)
            self._ended = self._ended or ending
            try:
                self._drain()
                self._pipe.send((event, args, request, reply, False))
            except (OSError, EOFError):   # it died: a restart sends this event again
                if not self._recover() and not (ending and self._last_try()):
                    raise RecorderLost(self.lost) from None
            return request

    def _call(self, event: str, *args) -> str | None:
        """Send an event and wait until it is recorded; the recorder's first error, if any."""
        with self._lock:
            try:
                request = self._send(event, *args, reply=True)
            except RecorderLost as error:
                return str(error)
            while request not in self._replies:
                try:
                    self._receive(block=True)
                except (OSError, EOFError):
                    if not self._recover() and not (event in ENDINGS and self._last_try()):
                        return self.lost
            return self._replies.pop(request)

    def _receive(self, block: bool) -> None:
        """Take one acknowledgement (waiting for it if ``block``)."""
        if not block and not self._pipe.poll():
            raise BlockingIOError
        request, error, state = self._pipe.recv()
        if state is not None:
            self._state = state
        done = self._unacked.pop(request, None)
        if done is None:
            return   # a restart's own set-up
        if request >= self._first_new:
            self._deaths = 0
        if done[2]:
            self._replies[request] = error

    def _drain(self) -> None:
        """Take every acknowledgement already sent."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self._receive(block=False)

    def _watch(self) -> None:
        """Restart the child as soon as it dies (not once it exited by itself, code 0:
        after an ending, or when this process's end of the pipe closed)."""
        while True:
            with self._lock:
                process = self._process
            multiprocessing.connection.wait([process.sentinel])
            with self._lock:
                # its files close a moment before it can be reaped; joined under the lock,
                # as _recover joins it: of two joins at once, one may see no exit code
                process.join(timeout=10)
                if process.exitcode == 0 or self.lost is not None or self._leaving \
                        or self._pipe.closed:
                    return
                if process is self._process:
                    self._recover()

    def _recover(self) -> bool:
        """The child is dead: start another on the same runs; False if recording gives up."""
        with contextlib.suppress(OSError, EOFError):
            self._drain()   # what it acknowledged before it died
        if self._process.is_alive():   # its pipe broke, yet it runs: end it
            self._process.kill()
        self._process.join(timeout=10)
        self._dead.append((self._process.pid, self._started))
        self._deaths += 1
        why = _death(self._process.exitcode)
        if self._deaths > MAX_RESTARTS:
            self.lost = (f"the MLflow recorder process died {self._deaths} times in a row "
                         f"(last: {why}); the sweep stopped, the same command resumes it")
            return False
        log.warning("the MLflow recorder process (pid %d) %s: restarted, %d event(s) sent "
                    "again", self._process.pid, why, len(self._unacked))
        self._restart()
        return True

    def _last_try(self) -> bool:
        """Once recording gave up: one more child, to record the sweep's ending."""
        if self._deaths > MAX_RESTARTS + 1:
            return False
        self._deaths += 1
        self.lost = None
        self._restart()
        return True

    def _restart(self) -> None:
        self._spawn()
        self._first_new = next(self._ids)
        try:
            if self._opened:
                self._pipe.send(("open", (), self._first_new, False, True))
                self._pipe.send(("restore", (self._state, self._dead), next(self._ids),
                                 False, True))
            for request, (event, args, reply) in self._unacked.items():
                self._pipe.send((event, args, request, reply, True))
        except OSError:   # died again at once: the watcher or the next wait sees it
            pass

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")   # no copy of a process running TF
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, *self._args),
                                        name="cnnsearch-mlflow", daemon=True)
        self._process.start()
        child.close()
        try:
            self._started = psutil.Process(self._process.pid).create_time()
        except psutil.Error:
            self._started = 0.0

    @staticmethod
    def _raise(error: str | None) -> None:
        if error:
            raise TrackingError(error)


def _serve(pipe, config: TrackingConfig, configure_logging: Callable[[], None],
           logs_model: bool) -> None:
    """The child: get ready, open the store when asked, then record each event and
    acknowledge it (with the open runs, when they changed)."""
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
        client, unusable = open_existing_store(config), None
    except TrackingError as error:   # reported at check and open
        client, unusable = None, str(error)
    recorder, first_error, state = None, None, None
    broken = False   # a write failed: the sweep stops at its next wait; only its end is written
    while True:
        try:
            event, args, request, reply, again = pipe.recv()
        except (EOFError, OSError):   # the sweep's process is gone and told nothing (reset,
            # if it left acknowledgements unread)
            if recorder is not None and recorder.owns_parent:
                recorder.sweep_failed(SystemExit("the sweep's process ended unexpectedly"))
            logging.shutdown()
            os._exit(0)   # at once: no interpreter teardown (Keras may be half-loaded)
        if broken and event in ENDINGS:   # a server that failed once: no long retries
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        try:
            if broken and event not in ENDINGS:
                pass   # the sweep is stopping: writing more would only wait on the same fault
            elif event in ("check", "open") and unusable:
                raise TrackingError(unusable)
            elif event == "open":
                recorder = MlflowRecorder(config, client=client)
            elif event == STOP:
                if recorder is not None:
                    recorder.sweep_failed(SystemExit("stopped before the sweep ended"))
            elif event == "epoch_ended" and again:   # perhaps recorded before the death
                recorder.epoch_ended(*args, again=True)
            elif event != "check":
                if event in ("sweep_started", "worker_started"):
                    args, recorder.environment = args[:1], args[1]
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
            broken = recorder is not None
        now = recorder.state() if recorder is not None else None
        answer = (request, first_error if reply else None, now if now != state else None)
        state = now
        if reply:
            first_error = None
        if event in ENDINGS:   # nothing left to do: skip the interpreter's (and TF's) teardown
            logging.shutdown()
            with contextlib.suppress(OSError):
                pipe.send(answer)
            os._exit(0)
        with contextlib.suppress(OSError):   # the sweep is gone: the next receive says so
            pipe.send(answer)
        # a distributed chief trains no trial: it loads Keras during its final fit
        if event in ("trial_started", "search_ended") and logs_model \
                and keras_loader.ident is None:
            keras_loader.start()


def _prepare_model_logging() -> None:
    """Load now what logging the final model loads on first use, so the sweep's last wait
    is short: Keras, GitPython (MLflow's git tags) and the map of installed packages MLflow
    checks the model's requirements against."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    from cnnsearch.models.native_logs import start_keras
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
    if server := re.match(r"API request to (\w+://[^/]+)\S* failed with exception", str(error)):
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
        return (f"MLflow recording failed: the MLflow server at {redact(server[1])} stopped"
                f" answering ({reason[1] if reason else 'no response'})")
    return f"MLflow recording failed: {type(error).__name__}: {first_line(str(error))}"


def _death(exitcode: int | None) -> str:
    """How a child process ended, in words."""
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"ended with exit code {exitcode}"
