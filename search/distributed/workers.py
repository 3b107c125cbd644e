"""The worker processes a sweep starts on this host, each the same ``cnnsearch sweep``
command as a worker (``distributed.role=worker``) for the chief (see
``search.distributed.chief``), with its share of the CPU threads or a GPU.

Kept apart from ``search.distributed.chief`` so that starting them imports neither keras-tuner
nor TensorFlow: the chief starts its workers before it imports them itself, and their
start-ups overlap.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace

from cnnsearch.search.config import DistributedConfig, Role, address, cannot_listen
from cnnsearch.search.distributed.relay import EventRelay

log = logging.getLogger(__name__)

PARENT_ENV = "CNNSEARCH_PARENT_PID"   # the process that started a local worker
STOP_GRACE_SECONDS = 30.0


def visible_gpus() -> list[str]:
    """The GPUs this host lets us use (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(out.stdout.splitlines())
            if line.startswith("GPU ")]


def worker_env(index: int, workers: int, gpus: list[str], workers_per_gpu: int,
               cores: int) -> dict[str, str]:
    """Environment of local worker ``index`` of ``workers``: its share of the CPU threads
    and, when there are GPUs, its GPU (``workers_per_gpu`` share one, memory growth on)."""
    threads = str(max(1, cores // workers))
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1",
           "OMP_NUM_THREADS": threads}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[(index // workers_per_gpu) % len(gpus)]
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"   # jax: allocate as needed
    return env


def check_listen(config: DistributedConfig) -> None:
    """Fail now, in one line, when the chief could not listen at ``distributed.bind``
    (a port in use, e.g. by this sweep's chief started twice): before any worker, record
    or file of the sweep is touched. Port 0 (any free port) always can."""
    host, port = address("distributed.bind", config.bind, any_port=True)
    if not port:
        return
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gRPC does
            sock.bind(where)
    except OSError:
        raise cannot_listen(host, port) from None


def with_port(config: DistributedConfig) -> DistributedConfig:
    """``config`` with a free port in ``distributed.bind`` where it asks for any (port 0),
    so this host's workers know the chief's address before it listens."""
    host, port = address("distributed.bind", config.bind, any_port=True)
    if port:
        return config
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return replace(config, bind=f"{host}:{port}")


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    relay: threading.Thread
    reported: bool = False   # its end has been handled


@dataclass
class WorkerPool:
    """The worker processes of this host: the same ``cnnsearch sweep`` command as a worker,
    for the chief at ``distributed.chief`` (role=worker) or at ``distributed.bind``.

    Each worker's output is relayed line by line to this process's stderr, prefixed
    with its name; each ends with this process (``search.distributed.chief.follow_parent``).
    With a ``relay``, the workers record their trials through this process's recorder.
    When the chief trains too, it is share 0 of ``distributed.workers`` (its threads or
    GPU, set in this process's environment by :meth:`start`, before it imports Keras).
    """

    overrides: list[str]
    config: DistributedConfig
    relay: EventRelay | None = None
    workers: list[Worker] = field(default_factory=list)

    @property
    def chief(self) -> str:
        if self.config.role == Role.worker:
            return self.config.chief
        host, port = address("distributed.bind", self.config.bind)
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def start(self) -> None:
        gpus, cores = visible_gpus(), len(os.sched_getaffinity(0))
        kept = [arg for arg in self.overrides
                if not arg.lstrip("~+").startswith("distributed.")]
        command = [sys.executable, "-m", "cnnsearch", "sweep", *kept,
                   "distributed.role=worker", f"distributed.chief={self.chief}",
                   "distributed.workers=1",
                   f"distributed.connect_timeout={self.config.connect_timeout}"]
        first = self.config.workers - self.config.worker_processes   # 1: the chief's share
        for index in range(first, self.config.workers):
            env = {**os.environ, **worker_env(index, self.config.workers, gpus,
                                              self.config.workers_per_gpu, cores),
                   PARENT_ENV: str(os.getpid()), **(self.relay.env if self.relay else {})}
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            name = f"worker {index - first + 1}"
            relay = threading.Thread(target=self._relay, args=(name, process), daemon=True)
            relay.start()
            self.workers.append(Worker(name, process, relay))
        log.info("started %d worker process(es) for chief %s", self.config.worker_processes,
                 self.chief)
        if first:   # this process trains the first share: its threads or GPU
            os.environ.update(worker_env(0, self.config.workers, gpus, self.config.workers_per_gpu,
                                         cores))

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            print(f"[{name}] {line.rstrip()}", file=sys.stderr, flush=True)

    def ended(self) -> list[Worker]:
        """Workers that ended since the last call."""
        done = [w for w in self.workers if not w.reported and w.process.poll() is not None]
        for worker in done:
            worker.reported = True
            worker.relay.join(timeout=5)
        return done

    def wait(self) -> list[Worker]:
        """Wait for every worker to end; returns those that failed."""
        for worker in self.workers:
            worker.process.wait()
        self.ended()
        return [w for w in self.workers if w.process.returncode != 0]

    @property
    def running(self) -> bool:
        return any(w.process.poll() is None for w in self.workers)

    def stop(self) -> None:
        """SIGTERM every worker still running (each closes its runs KILLED), then wait."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %g s: killed", worker.name,
                            worker.process.pid, STOP_GRACE_SECONDS)
                worker.process.kill()
                worker.process.wait()
        if self.relay is not None:   # what they sent before they ended is handed on
            self.relay.close()
