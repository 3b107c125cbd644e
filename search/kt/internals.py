"""Every use of keras-tuner's private API, in one place, for the tested versions only.

cnnsearch needs a few things keras-tuner does not make public: a hook on each random
draw (to skip infeasible candidates), the oracle's record of tried values, the classes
of keras-tuner's own callbacks (its best-epoch checkpoint among them), the trial's
error handling, the switch that builds a model per hyperparameter condition, its JSON
state writer (made atomic), and, for a distributed sweep, its gRPC oracle service, the
oracle's running trials and its retry queue. Each is wrapped here under a public name,
so an upgrade of keras-tuner touches this file only, and an untested version fails at
once with one clear line instead of misbehaving in the middle of a sweep.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from concurrent import futures

import grpc
import keras_tuner as kt
from keras_tuner.src import protos
from keras_tuner.src import utils as kt_utils
from keras_tuner.src.distribute import oracle_client
from keras_tuner.src.distribute.oracle_chief import OracleServicer
from keras_tuner.src.engine.conditions import Parent
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch, TunerCallback

from cnnsearch.search.config import cannot_listen
from cnnsearch.search.errors import SweepStopped, UserError, disk_full

TESTED_VERSIONS = ("1.4.8",)
# An oracle's ``max_consecutive_failed_trials``: the sweep's stop policy counts failures
# (keras-tuner's own count raises a bare RuntimeError, in a chief while it holds the
# oracle's lock, which it then never releases).
NO_FAILURE_LIMIT = 1 << 30


def _save_json_whole(path, obj) -> str:
    """keras-tuner's ``utils.save_json``, written whole or not at all (a side file moved
    in place): a kill while it writes a trial's ``trial.json`` or ``oracle.json`` leaves
    the previous file, not an empty one that the next start cannot read."""
    text = json.dumps(obj)
    side = f"{path}.{os.getpid()}.tmp"
    with open(side, "w") as file:
        file.write(text)
    os.replace(side, path)
    return text


kt_utils.save_json = _save_json_whole   # keras-tuner's state writers call it by this name


def check_version() -> None:
    """Raises UserError if the installed keras-tuner is not one cnnsearch was tested with."""
    if kt.__version__ not in TESTED_VERSIONS:
        raise UserError(f"keras-tuner {kt.__version__} is not supported (cnnsearch uses its "
                        f"internals, tested with {', '.join(TESTED_VERSIONS)}): "
                        f"pip install 'keras-tuner=={TESTED_VERSIONS[-1]}'")


class FilteredDraws:
    """Oracle mixin: a random draw is kept only if ``accept(values)`` says so.

    Rejected draws are remembered as tried (never drawn again) and replaced by
    another draw, up to ``max_draws`` per request.
    """

    max_draws = 1000

    def accept(self, values: dict) -> bool:
        return True

    def preferred_values(self) -> dict | None:
        """Values to try instead of the next random draw (None: draw)."""
        return None

    def random_values(self) -> dict | None:
        """An accepted random draw, or None when the space seems exhausted."""
        return self._random_values()

    def _random_values(self):   # keras-tuner calls it for every random draw
        preferred = self.preferred_values()
        if preferred is not None and not self.was_tried(preferred) and self.accept(preferred):
            return preferred
        for _ in range(self.max_draws):
            values = super()._random_values()
            if values is None or self.accept(values):
                return values
        return None

    def mark_tried(self, values: dict) -> None:
        self._tried_so_far.add(self._compute_values_hash(values))

    def was_tried(self, values: dict) -> bool:
        return self._duplicate(values)


class TunerHooks:
    """Tuner mixin: a hypermodel that declares its whole space up front is built once per
    trial, and a full disk stops the search (keras-tuner would count each trial it
    breaks as failed).
    """

    def _try_run_and_update_trial(self, trial, *args, **kwargs):
        try:
            return super()._try_run_and_update_trial(trial, *args, **kwargs)
        except _HandBack as wrapper:   # the sweep stops as the observer said, in its words
            raise wrapper.__cause__ from None

    def _run_and_update_trial(self, trial, *args, **kwargs):
        try:
            return super()._run_and_update_trial(trial, *args, **kwargs)
        except Exception as error:
            # not the trial's fault: the trial stays running, so a resume runs it again
            if message := disk_full(error):
                raise kt.errors.FatalError(message) from error
            if isinstance(error, SweepStopped):
                raise _HandBack() from error
            raise

    def _activate_all_conditions(self):
        # The hypermodel's declare_hyperparameters already registered every conditional
        # hyperparameter; keras-tuner would otherwise build a model per condition.
        pass


class _HandBack(kt.errors.FatalError):
    """Carries a ``SweepStopped`` through keras-tuner's trial error handling."""


def is_best_epoch_checkpoint(callback) -> bool:
    """True for keras-tuner's own best-epoch checkpoint (exactly that class)."""
    return type(callback) is SaveBestEpoch


def is_tuner_callback(callback) -> bool:
    """True for the callback keras-tuner adds to report epochs to the tuner."""
    return isinstance(callback, TunerCallback)


class BestEpochInMemory(SaveBestEpoch):
    """keras-tuner's best-epoch checkpoint, written once when training ends.

    keras-tuner writes the weights file at every improving epoch (~40 ms, a fifth
    of an epoch of a small model on digits); this keeps a copy in memory instead.
    Same file, same semantics (Hyperband's hand-over and ``get_best_models`` read it).
    """

    best_weights: list | None = None

    def _save_model(self):
        self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is None:  # this execution did not beat an earlier one
            return
        last = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        super()._save_model()
        self.model.set_weights(last)
        self.best_weights = None


# -- distributed sweeps ------------------------------------------------------------


class OracleServer:
    """keras-tuner's gRPC oracle service (its ``oracle_chief.start_server`` without the
    endless loop: the chief's own loop decides when the search is over).

    Raises:
        UserError: if it cannot listen at ``host:port``.
    """

    def __init__(self, oracle, host: str, port: int) -> None:
        oracle.verbose = 0   # keras-tuner's trial tables on stdout (search() sets it)
        quiet_trial_protos()
        self.servicer = _Servicer(oracle)
        # one thread, as keras-tuner's; no port sharing: a second chief must not bind
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1),
                                  options=[("grpc.so_reuseport", 0)])
        protos.get_service_grpc().add_OracleServicer_to_server(self.servicer, self.server)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise cannot_listen(host, port)
        self.server.start()

    @property
    def told_a_worker_to_stop(self) -> bool:
        """Whether a worker asked for a trial and was told the search is over."""
        return self.servicer.stop_triggered

    def stop(self) -> None:
        self.server.stop(grace=1).wait()


class _Servicer(OracleServicer):
    """keras-tuner's service, saving the oracle once a trial has ended: its ``end_trial``
    saves before it drops the trial from the running ones, so a chief killed then would
    run a completed trial again on resume."""

    def EndTrial(self, request, context):  # noqa: N802 - gRPC's method name
        response = super().EndTrial(request, context)
        _save(self.oracle)
        return response


@kt.synchronized
def _save(oracle) -> None:
    oracle.save()


@kt.synchronized
def repair_after_reload(oracle) -> None:
    """Undo what a kill between keras-tuner's two writes of a trial (its trial.json, then
    oracle.json) leaves behind, once the oracle is reloaded: a trial saved as ended but
    still ongoing in oracle.json is not run again; one saved as running that oracle.json
    never knew of (killed just after it was created) runs again, instead of counting
    towards ``max_trials`` without ever running."""
    status = kt.engine.trial.TrialStatus
    queue = [trial_id for trial_id in oracle._retry_queue
             if oracle.trials[trial_id].status not in (status.COMPLETED, status.FAILED)]
    for trial_id in sorted(oracle.trials):
        if oracle.trials[trial_id].status == status.RUNNING and trial_id not in queue:
            queue.append(trial_id)
            if trial_id not in oracle.start_order:
                oracle.start_order.append(trial_id)
    oracle._retry_queue = queue


@kt.synchronized
def ongoing_trials(oracle) -> dict[str, str]:
    """Tuner id -> id of the trial it runs, as the chief's oracle sees it."""
    return {tuner: trial.trial_id for tuner, trial in oracle.ongoing_trials.items()}


@kt.synchronized
def give_back_trial(oracle, tuner_id: str, trial_id: str, retry: bool, message: str) -> None:
    """Take a trial from a lost tuner: queue it for the next worker (as keras-tuner's own
    reload does with running trials) or end it FAILED."""
    oracle.ongoing_trials.pop(tuner_id, None)
    oracle.tuner_ids.discard(tuner_id)
    if retry:
        oracle._retry_queue.append(trial_id)
        oracle.save()
        return
    trial = oracle.trials[trial_id]
    trial.status, trial.message = kt.engine.trial.TrialStatus.FAILED, message
    oracle.end_trial(trial)


def tuners_asking(oracle) -> bool:
    """Whether a tuner may still ask for a trial (none has been told to stop it)."""
    return bool(oracle.tuner_ids)


@kt.synchronized
def consecutive_failures(oracle) -> list[str]:
    """The messages of the trials that failed in a row, the latest last."""
    failed = []
    for trial_id in reversed(oracle.end_order):
        trial = oracle.trials[trial_id]
        if trial.status != kt.engine.trial.TrialStatus.FAILED:
            break
        failed.append(trial.message or "")
    return failed[::-1]


def hyperband_parent(trial) -> str | None:
    """The trial whose best weights a Hyperband trial went on from (None: none)."""
    return trial.hyperparameters.values.get("tuner/trial_id")


def trials_waiting(oracle) -> bool:
    """Whether a trial given back by a lost tuner waits for another to take it."""
    return bool(oracle._retry_queue)


@kt.synchronized
def leave_search(oracle, tuner_id: str) -> None:
    """The tuner ``tuner_id`` asks for no more trials (its search ended, perhaps by an
    error, before the oracle told it to stop)."""
    oracle.tuner_ids.discard(tuner_id)


@kt.synchronized
def stop_new_trials(oracle) -> None:
    """No trial starts after this one (the running ones finish)."""
    oracle.max_trials = len(oracle.trials)


def is_worker_oracle(oracle) -> bool:
    """True in a worker process: its oracle is keras-tuner's gRPC client of the chief's."""
    return type(oracle).__name__ == "OracleClient"


def same_space(oracle) -> bool:
    """In a worker: whether its own search space is the chief's (what a worker's tuner
    declared locally against what the chief's oracle serves)."""
    def described(space) -> dict:
        return {hp.name: hp.get_config() for hp in space.space}

    return described(oracle._oracle.get_space()) == described(oracle.get_space())


def quiet_trial_protos() -> None:
    """keras-tuner 1.4.8 prints a value each time a conditional hyperparameter is turned
    into a protocol buffer (a debug ``print`` left in ``Parent.to_proto``): every trial
    sent between chief and worker printed ~20 stray lines. Swallow them."""
    original = Parent.to_proto
    if getattr(original, "quiet", False):
        return

    def to_proto(self):
        with contextlib.redirect_stdout(io.StringIO()):
            return original(self)

    to_proto.quiet = True
    Parent.to_proto = to_proto


def set_rpc_timeout(seconds: float) -> None:
    """How long a worker's call to the chief may wait (keras-tuner: 60 minutes)."""
    oracle_client.TIMEOUT = seconds


def rpc_failure(error: BaseException) -> str | None:
    """The status of a failed call to the chief (e.g. UNAVAILABLE), or None."""
    if not isinstance(error, grpc.RpcError):
        return None
    code = error.code() if callable(getattr(error, "code", None)) else None
    return code.name if code is not None else "RPC failed"
