"""Several trials at once: a chief serves the oracle and trains a share of the trials,
worker processes train the rest.

The engine is keras-tuner's distributed mode: the chief serves its oracle over gRPC
(keras-tuner's ``OracleServicer``) and each worker's tuner asks it for trials through
keras-tuner's ``OracleClient`` (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``). This module adds what its users report missing: the
chief's loop watches its workers, so a worker that dies (or, on another host, a trial
that outlives ``distributed.trial_timeout``) hands its trial to another worker once,
then fails it, instead of stalling the chief (keras-tuner #915); a worker gives up
with one line when no chief answers within ``distributed.connect_timeout`` (#990);
the sweep's stop policy (budget, consecutive failures) holds for the whole sweep.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from cnnsearch.search.config import DistributedConfig, address
from cnnsearch.search.distributed.workers import PARENT_ENV, WorkerPool
from cnnsearch.search.errors import UserError
from cnnsearch.search.kt.internals import (
    OracleServer,
    consecutive_failures,
    give_back_trial,
    ongoing_trials,
    quiet_trial_protos,
    set_rpc_timeout,
    stop_new_trials,
    trials_waiting,
    tuners_asking,
)
from cnnsearch.search.kt.stopping import StopPolicy

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


# -- a worker -----------------------------------------------------------------------


def worker_id() -> str:
    """This worker's keras-tuner tuner id: unique across hosts, never ``chief``."""
    return f"worker-{socket.gethostname()}-{os.getpid()}"


def connect(chief: str, timeout: float) -> None:
    """Point keras-tuner at the chief, after checking it answers.

    Raises:
        UserError: if no chief answers at ``chief`` within ``timeout`` seconds.
    """
    host, port = address("distributed.chief", chief)
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UserError(f"no cnnsearch chief answered at distributed.chief={chief} within "
                        f"{timeout:g} s (distributed.connect_timeout): start the chief "
                        "first, or check the host, port and firewall") from None
    finally:
        channel.close()
    set_rpc_timeout(timeout)
    quiet_trial_protos()
    os.environ.update({"KERASTUNER_TUNER_ID": worker_id(), "KERASTUNER_ORACLE_IP": host,
                       "KERASTUNER_ORACLE_PORT": str(port)})


def follow_parent() -> None:
    """In a worker started by a process of this host: end (SIGTERM) when that process
    ends, however it ends (Linux's parent-death signal)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):   # it ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


# -- the chief ----------------------------------------------------------------------


@dataclass
class Chief:
    """Serves the sweep's oracle to its workers (and to its own search, when it trains
    too) until the search is over.

    Args:
        oracle: the sweep's keras-tuner oracle (this process's).
        config: the distributed config.
        policy: the sweep's stop policy (budget, consecutive failures), shared with the
            chief's own tuner.
        lost: called with (trial id, why) for each trial whose worker was lost.
    """

    oracle: object
    config: DistributedConfig
    policy: StopPolicy
    lost: Callable[[str, str], None] = lambda trial_id, why: None
    server: OracleServer | None = None
    _seen: dict[str, float] = field(default_factory=dict)   # trial id -> first seen running
    _requeued: set[str] = field(default_factory=set)

    def start(self) -> None:
        """Listen on ``distributed.bind``."""
        host, port = address("distributed.bind", self.config.bind, any_port=True)
        self.server = OracleServer(self.oracle, host, port)
        public = socket.gethostname() if host in ("0.0.0.0", "::") else host
        log.info("chief serving trials at %s:%d", public, self.server.port)

    def serve(self, pool: WorkerPool | None, train: Callable[[], None] | None = None) -> None:
        """Run until every trial is handed out and ended (or the stop policy says so).

        ``train``: the chief's own search (it trains too), run here at once and again
        whenever a lost worker's trial waits for a taker, with the checks beside it.

        Raises:
            UserError: if every local worker ended while trials were left to run and no
                other worker can come (no ``distributed.role=chief``, no ``train``).
        """
        trained = False
        try:
            while True:
                if train is not None and (not trained or trials_waiting(self.oracle)) \
                        and self.policy.stopped_reason is None:
                    trained = True
                    with self._checking(pool):
                        train()
                if self._finished(pool, trained):
                    return
                if pool is not None and pool.relay is not None and pool.relay.failure:
                    raise pool.relay.failure   # the recorder of the workers' trials is lost
                self._check(pool)
                time.sleep(POLL_SECONDS)
        finally:
            self.server.stop()

    def _check(self, pool: WorkerPool | None) -> None:
        self._check_workers(pool)
        self._check_timeouts()
        self._check_stops()

    @contextlib.contextmanager
    def _checking(self, pool: WorkerPool | None) -> Iterator[None]:
        """The checks in a thread of their own while this one trains."""
        done = threading.Event()

        def check() -> None:
            while not done.wait(POLL_SECONDS):
                self._check(pool)

        thread = threading.Thread(target=check, name="cnnsearch-chief-checks", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _finished(self, pool: WorkerPool | None, trained: bool) -> bool:
        """Every trial is over and no other will start (the chief's own search asked for
        one and was told to stop, or a worker was)."""
        stopping = trained or self.server.told_a_worker_to_stop
        waiting = trained and trials_waiting(self.oracle) and self.policy.stopped_reason is None
        if stopping and not ongoing_trials(self.oracle) and not tuners_asking(self.oracle) \
                and not waiting:
            return True
        if pool is not None and not pool.running and self.config.role is None and not trained:
            self._check_workers(pool)
            if ongoing_trials(self.oracle) or not self.server.told_a_worker_to_stop:
                raise UserError("every worker process ended before the search was over "
                                "(their last lines are above)")
            return True
        return False

    def _check_workers(self, pool: WorkerPool | None) -> None:
        for worker in pool.ended() if pool else []:
            code = worker.process.returncode
            if code != 0:
                log.warning("%s ended with exit code %s", worker.name, code)
            if pool.relay is not None:   # its last events are recorded before its loss
                pool.relay.drained(worker.process.pid)
            for tuner_id, trial_id in ongoing_trials(self.oracle).items():
                if tuner_id.endswith(f"-{worker.process.pid}"):
                    self._lose(tuner_id, trial_id, f"its {worker.name} (pid "
                                                   f"{worker.process.pid}) ended with exit "
                                                   f"code {code}")

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        running = ongoing_trials(self.oracle)
        self._seen = {t: self._seen.get(t, now) for t in running.values()}
        if self.config.trial_timeout is None:
            return
        for tuner_id, trial_id in running.items():
            if now - self._seen[trial_id] > self.config.trial_timeout:
                self._lose(tuner_id, trial_id, f"no result within distributed.trial_timeout="
                                               f"{self.config.trial_timeout:g} s")

    def _lose(self, tuner_id: str, trial_id: str, why: str) -> None:
        again = trial_id not in self._requeued
        self._requeued.add(trial_id)
        give_back_trial(self.oracle, tuner_id, trial_id, retry=again, message=why)
        self._seen.pop(trial_id, None)
        log.warning("trial %s lost: %s; %s", trial_id, why,
                    "handed to another worker" if again else "failed (lost twice)")
        self.lost(trial_id, why)

    def _check_stops(self) -> None:
        """No trial starts after the running ones once the stop policy says so."""
        if self.policy.search_stop(consecutive_failures(self.oracle)):
            stop_new_trials(self.oracle)
