"""One MLflow recorder per host: this host's workers send their trial events to the chief.

A distributed sweep's chief runs the host's one recorder process; each worker it starts
gets the address of the chief's :class:`EventRelay` in its environment and records
through a :class:`RelayedRecorder` instead of a recorder process of its own (no MLflow
import, no second process, no 200-750 MB). The chief hands each event to its recorder,
which keeps its guarantees for them: a trial's run exists before the trial trains (the
worker waits for that one event), and a recorder that dies is restarted with what it
had not acknowledged. Workers on other hosts, started by hand, have no relay address
and keep a recorder of their own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import threading

from cnnsearch.search.events import trial_record

log = logging.getLogger(__name__)

ADDRESS_ENV = "CNNSEARCH_RELAY_ADDRESS"
KEY_ENV = "CNNSEARCH_RELAY_KEY"
# what a worker relays; the sweep's own events (start, end, failure) are the chief's
EVENTS = ("trial_started", "epoch_ended", "trial_ended")


class EventRelay:
    """In the chief: receives the trial events of this host's workers (a Unix socket, a
    random key) and hands each to ``recorder`` once :meth:`attach` has given it.

    ``failure`` holds the recorder's first error (its process lost for good): the chief
    stops the sweep with it.
    """

    def __init__(self) -> None:
        self._key = os.urandom(16)
        self._listener = multiprocessing.connection.Listener(family="AF_UNIX",
                                                             authkey=self._key)
        self._recorder = None
        self._attached = threading.Event()
        self._served: dict[int, threading.Thread] = {}   # worker pid -> its thread
        self.failure: BaseException | None = None
        self._closed = False
        threading.Thread(target=self._accept, name="cnnsearch-relay", daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        """What a worker's environment needs to reach this relay."""
        return {ADDRESS_ENV: self._listener.address, KEY_ENV: self._key.hex()}

    def attach(self, recorder) -> None:
        """Hand the workers' events to ``recorder`` from now on."""
        self._recorder = recorder
        self._attached.set()

    def drained(self, pid: int, timeout: float = 10.0) -> None:
        """Wait until every event worker ``pid`` sent before it ended has been handed on."""
        thread = self._served.get(pid)
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Once the workers have ended: hand on what they sent last, then stop listening."""
        self._closed = True
        for thread in list(self._served.values()):
            thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection = self._listener.accept()
                pid = connection.recv()
            except (OSError, EOFError, multiprocessing.AuthenticationError):
                if self._closed:
                    return
                continue
            thread = threading.Thread(target=self._serve, args=(connection,),
                                      name=f"cnnsearch-relay-{pid}", daemon=True)
            self._served[pid] = thread
            thread.start()

    def _serve(self, connection) -> None:
        """One worker's events, in order, until it closes its end (or ends)."""
        with connection:
            while True:
                try:
                    event, args, reply = connection.recv()
                except (OSError, EOFError):
                    return
                self._attached.wait()
                error = self.failure
                if error is None and event in EVENTS:
                    try:
                        getattr(self._recorder, event)(*args)
                    except Exception as failed:   # noqa: BLE001 - the worker raises it
                        error = self.failure = failed
                if reply:
                    with contextlib.suppress(OSError):
                        connection.send(error)


class RelayedRecorder:
    """In a worker the chief started: records through the chief's relay, with the
    interface of a recorder process (``check``, ``open``, ``close``, the events)."""

    def __init__(self, address: str, key: str) -> None:
        self._where = (address, bytes.fromhex(key))
        self._connection = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> RelayedRecorder | None:
        """The relay this process was started with, or None (a worker started by hand)."""
        address = os.environ.get(ADDRESS_ENV)
        return cls(address, os.environ[KEY_ENV]) if address else None

    def check(self) -> None: ...

    def open(self) -> None:
        address, key = self._where
        self._connection = multiprocessing.connection.Client(address, family="AF_UNIX",
                                                             authkey=key)
        self._connection.send(os.getpid())

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def trial_started(self, trial_id: str, values: dict, candidate) -> None:
        """Returns once the chief's recorder has made the trial's run.

        Raises:
            The chief's recording error (``TrackingError``), if any.
        """
        record = trial_record(candidate)
        with self._lock:
            self._connection.send(("trial_started", (trial_id, dict(values), record), True))
            error = self._connection.recv()
        if error is not None:
            raise error

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict) -> None:
        self._send("epoch_ended", trial_id, epoch, dict(logs))

    def trial_ended(self, outcome) -> None:
        self._send("trial_ended", outcome)

    def _send(self, event: str, *args) -> None:
        with self._lock:
            self._connection.send((event, args, False))
