"""The relay that lets a host's workers record through the chief's one recorder."""

from __future__ import annotations

import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from cnnsearch.search.distributed.relay import EventRelay, RelayedRecorder
from cnnsearch.search.events import TrialOutcome
from cnnsearch.tracking.config import TrackingError


class Recorder:
    """A stand-in for the chief's recorder process: what it was given, in order."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_on = fail_on
        self.arrived = threading.Event()

    def __getattr__(self, event: str):
        def record(*args):
            if event == self.fail_on:
                raise TrackingError("MLflow recording failed: disk full")
            self.events.append((event, *args))
            self.arrived.set()
        return record


CANDIDATE = SimpleNamespace(architecture="arch", learning_rate=0.01, optimizer=object())
OUTCOME = TrialOutcome("0", "completed", None, 0.9, 0.9, 2, 1.0, 100.0, 500.0)


def _worker(relay: EventRelay) -> RelayedRecorder:
    worker = RelayedRecorder(relay.env["CNNSEARCH_RELAY_ADDRESS"],
                             relay.env["CNNSEARCH_RELAY_KEY"])
    worker.open()
    return worker


def test_a_workers_events_reach_the_chiefs_recorder_in_order():
    relay, recorder = EventRelay(), Recorder()
    relay.attach(recorder)
    worker = _worker(relay)
    worker.trial_started("0", {"filters": 8}, CANDIDATE)   # returns once it is recorded
    assert recorder.events == [("trial_started", "0", {"filters": 8}, SimpleNamespace(
        architecture="arch", learning_rate=0.01,   # no search class travels
        trained_by=f"{socket.gethostname()}:{os.getpid()}"))]
    for epoch in range(3):
        worker.epoch_ended("0", epoch, {"val_accuracy": 0.5})
    worker.trial_ended(OUTCOME)
    worker.close()
    relay.drained(os.getpid())
    assert [event[:3] for event in recorder.events[1:]] == [
        ("epoch_ended", "0", 0), ("epoch_ended", "0", 1), ("epoch_ended", "0", 2),
        ("trial_ended", OUTCOME)]
    relay.close()


def test_a_trial_waits_until_the_chief_has_a_recorder():
    relay, recorder = EventRelay(), Recorder()
    worker = _worker(relay)
    started = threading.Thread(target=worker.trial_started, args=("0", {}, CANDIDATE))
    started.start()
    started.join(timeout=1.0)
    assert started.is_alive() and not recorder.events   # no run yet: the trial waits
    relay.attach(recorder)
    started.join(timeout=10)
    assert not started.is_alive() and recorder.events[0][:2] == ("trial_started", "0")
    worker.close()
    relay.close()


def test_a_recording_error_reaches_the_worker_and_the_chief():
    relay = EventRelay()
    relay.attach(Recorder(fail_on="trial_started"))
    worker = _worker(relay)
    with pytest.raises(TrackingError, match="disk full"):
        worker.trial_started("0", {}, CANDIDATE)
    assert isinstance(relay.failure, TrackingError)   # the chief stops the sweep with it
    worker.close()
    relay.close()


def test_the_events_a_worker_sent_before_it_died_are_all_handed_on():
    relay, recorder = EventRelay(), Recorder()
    relay.attach(recorder)
    script = ("import sys; from cnnsearch.search.distributed.relay import RelayedRecorder\n"
              "w = RelayedRecorder.from_env(); w.open()\n"
              "for epoch in range(200): w.epoch_ended('0', epoch, {'loss': 1.0})\n"
              "import os; os._exit(9)\n")   # dies without closing anything
    worker = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **relay.env})
    assert worker.wait(timeout=120) == 9
    relay.drained(worker.pid)   # what the chief waits for before it counts the trial lost
    relay.close()
    assert [event[2] for event in recorder.events] == list(range(200))


def test_a_process_without_the_key_is_refused():
    relay, recorder = EventRelay(), Recorder()
    relay.attach(recorder)
    with pytest.raises(multiprocessing.AuthenticationError):
        multiprocessing.connection.Client(relay.env["CNNSEARCH_RELAY_ADDRESS"],
                                          family="AF_UNIX", authkey=b"guessed")
    relay.close()
    assert not recorder.events


def test_a_worker_started_by_hand_has_no_relay(monkeypatch):
    monkeypatch.delenv("CNNSEARCH_RELAY_ADDRESS", raising=False)
    assert RelayedRecorder.from_env() is None
