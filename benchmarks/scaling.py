"""Scaling: the same sweep with 1 and with N worker processes on this host.

Each run is the whole ``cnnsearch sweep`` command in a fresh process, timed from its
start to its exit (imports, data, search, final fit, MLflow records and model): an
8-trial digits sweep (``--space`` default, ``--epochs`` 20 per trial: no early
stopping, no learning-rate drop, no pruning, so every variant trains the same 8
candidates for the same epochs; the final fit a fixed ``epochs / 2``, as which of
near-tied candidates wins, and so its own epoch count, varies with the weights'
random start) with ``distributed.workers=1`` (the one-process sweep) and ``=2`` (the
chief and one worker process, both training, one CPU thread each). Variants alternate,
``--repeats`` times.
Reported: the median wall time, trials per hour, the speed-up over 1 worker, the
scaling efficiency (speed-up / workers), and the run's three phases, timed from the
arrival of its log lines: start-up (process start to the first trial's line), trials
(to the "final fit" line) and finish (final fit, MLflow records, exit). The trials
phase's speed-up is what the extra workers buy; "trial s summed" adds up every trial's
own time (its "score" line), so it grows when trials side by side slow each other down;
"bound" is the speed-up a sweep with N workers would reach if its start-up and finish
cost no more than one worker's (the best any way of starting the workers can do with
these trials on this machine), and "of bound" the share of it reached. Also the peak of
the summed resident memory of all the sweep's processes, and the most processes at once.
With an NVIDIA GPU (every worker on it: ``--workers 1 2
4 8``), also its mean utilisation during the run (``nvidia-smi`` every 0.5 s), and the
target is the best number of workers >= 3x one.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import psutil

from benchmarks import common
from benchmarks.common import REPO, Table, fmt, median, ratio, verdict

NAME = "scaling"
TARGET = 1.25   # 2 workers vs 1, whole process, on this 2-core machine
BOUND_TARGET = 0.9   # and this share of the bound (issue 27)
GPU_TARGET = 3.0   # on one GPU: the best number of workers vs 1


def sweep(params: dict) -> dict:
    """One whole ``cnnsearch sweep`` with ``params['workers']`` workers (worker)."""
    root = Path(params["workdir"]) / "root"
    command = [sys.executable, "-m", "cnnsearch", "sweep", f"search_space={params['space']}",
               f"tuner.max_trials={params['trials']}", f"training.epochs={params['epochs']}",
               "training.early_stopping_patience=null", "training.reduce_lr_patience=null",
               "tuner.pruning=none", f"final_fit.epochs={max(1, params['epochs'] // 2)}",
               f"data.limit={params['limit']}", f"seed={params['seed']}",
               f"distributed.workers={params['workers']}", f"paths.root={root}",
               *params.get("overrides", [])]
    started = time.perf_counter()
    stamps: dict[str, float] = {}   # phase -> seconds from start to its first log line
    trial_seconds = 0.0   # each trial's own time, as its "score" line gives it
    with common.GpuSampler() as gpu:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        memory = TreeMemory(process.pid)
        tail: deque[str] = deque(maxlen=50)
        for line in process.stderr:
            now = time.perf_counter() - started
            for phase, pattern in PHASE_LINES.items():
                if phase not in stamps and pattern.search(line):
                    stamps[phase] = now
            if ended := TRIAL_ENDED.search(line):
                trial_seconds += float(ended[1])
            tail.append(line)
        process.wait()
        memory.stop()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"sweep failed ({process.returncode}):\n{''.join(tail)[-3000:]}")
    trials = sum(1 for _ in (root / "sweeps").glob("*/tuner/trial_*/trial.json"))
    first, final = stamps.get("trials"), stamps.get("finish")
    return {"seconds": seconds, "n_trials": trials, "trials_per_hour": 3600 * trials / seconds,
            "startup_seconds": first,
            "trials_seconds": final - first if first is not None and final else None,
            "finish_seconds": seconds - final if final else None,
            "trial_seconds": trial_seconds, "peak_rss_mb": memory.peak_mb,
            "processes": memory.most_processes, **gpu.summary}


class TreeMemory:
    """The summed resident memory of a process and all its descendants, sampled every
    0.25 s: its peak (MB) and the most processes seen at once."""

    def __init__(self, pid: int) -> None:
        self.peak_mb, self.most_processes = 0.0, 0
        self._root, self._done = psutil.Process(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.25):
            try:
                tree = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:   # the sweep has ended
                return
            rss = 0
            for member in tree:
                with contextlib.suppress(psutil.Error):
                    rss += member.memory_info().rss
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            self.most_processes = max(self.most_processes, len(tree))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# the log line that opens each phase after start-up (a worker's lines come prefixed)
PHASE_LINES = {"trials": re.compile(r"INFO\] trial \d+: (?!score)"),
               "finish": re.compile(r"INFO\] final fit: ")}
TRIAL_ENDED = re.compile(r"INFO\] trial \d+: score .* after \d+ epochs \(([\d.]+)s")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--space", default="default", help="search_space preset (default: default)")
    p.add_argument("--limit", type=int, default=None, help="training images (all: null)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides for every sweep (e.g. tracking=none where MLflow "
                        "is missing)")
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs, args.repeats, args.limit, args.space = 2, 1, 1, 200, "small"
    variants = [f"workers{n}" for n in args.workers]
    base = {"trials": args.trials, "epochs": args.epochs, "seed": args.seed, "space": args.space,
            "limit": "null" if args.limit is None else args.limit, "overrides": args.overrides}
    runs = common.run_interleaved(
        NAME, variants, args.repeats,
        lambda variant, repeat: {**base, "workers": int(variant.removeprefix("workers"))},
        out)
    return {"params": {**base, "workers": args.workers, "repeats": args.repeats},
            "runs": runs, "summary": summarise(runs)}


PHASES = ("startup_seconds", "trials_seconds", "finish_seconds")


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {variant: {key: median(r.get(key) for r in results)
                         for key in ("seconds", "trials_per_hour", "n_trials",
                                     "gpu_utilisation", "trial_seconds", "peak_rss_mb",
                                     "processes", *PHASES)}
               for variant, results in runs.items()}
    one = summary.get("workers1", {})
    for variant, s in summary.items():
        workers = int(variant.removeprefix("workers"))
        s["speedup"] = ratio(one.get("seconds"), s["seconds"])
        s["efficiency"] = s["speedup"] / workers
        s["trials_speedup"] = ratio(one.get("trials_seconds"), s["trials_seconds"])
        s["bound_speedup"] = ratio(one.get("seconds"), one.get("startup_seconds", math.nan)
                                   + s["trials_seconds"] + one.get("finish_seconds", math.nan))
    return summary


def tables(payload: dict) -> list[Table]:
    p, summary = payload["params"], payload["summary"]
    gpu = bool(common.finite(s.get("gpu_utilisation") for s in summary.values()))
    rows = []
    best = max(summary, key=lambda v: summary[v]["speedup"])
    for variant, s in summary.items():
        workers = int(variant.removeprefix("workers"))
        if gpu:
            target = GPU_TARGET if variant == best and workers > 1 else None
        else:
            target = TARGET if workers == 2 else None
        rows.append([str(workers), fmt(s["n_trials"], 0), fmt(s["seconds"], 1),
                     fmt(s["trials_per_hour"], 0), fmt(s["speedup"], 2),
                     fmt(s["efficiency"], 2), f">= {target}" if target else "",
                     verdict(s["speedup"], target, at_most=False) if target else "",
                     *(fmt(s.get(phase), 1) for phase in PHASES),
                     fmt(s.get("trials_speedup"), 2), fmt(s.get("trial_seconds"), 1),
                     fmt(s.get("bound_speedup"), 2) if workers > 1 else "",
                     fmt(ratio(s["speedup"], s.get("bound_speedup")), 2) if workers > 1 else "",
                     fmt(s.get("peak_rss_mb"), 0), fmt(s.get("processes"), 0)]
                    + ([fmt(s.get("gpu_utilisation"), 0)] if gpu else []))
    title = (f"scaling: whole `cnnsearch sweep`, {p['trials']} digits trials x {p['epochs']} "
             f"epochs, search_space={p['space']}, median of {p['repeats']} interleaved runs; "
             "phases in seconds; trial s summed: every trial's own time added up; "
             "bound: the speed-up with 1 worker's start-up and finish; peak RSS: all the "
             "sweep's processes summed, sampled every 0.25 s")
    return [(title, ["workers", "trials", "wall s", "trials/hour", "speed-up",
                     "efficiency", "target", "met", "start-up s", "trials s", "finish s",
                     "trials speed-up", "trial s summed", "bound",
                     f"of bound (>= {BOUND_TARGET})", "peak RSS MB", "processes",
                     *(["GPU util %"] if gpu else [])], rows)]


WORKERS = {f"workers{n}": sweep for n in range(1, 17)}


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
