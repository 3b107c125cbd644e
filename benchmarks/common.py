"""Shared by every benchmark: arguments, machine info, medians and ratios, fresh-process
workers run in interleaved order (A B A B ...), and the JSON + table output.

Nothing here imports Keras: the parent process of a benchmark stays light, and each
measured variant runs in its own ``python -m benchmarks.<name> --worker <variant>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "outputs/benchmarks"
PACKAGES = ("cnnsearch", "keras", "tensorflow", "keras-tuner", "mlflow", "numpy",
            "scikit-learn", "jax", "torch", "onnx", "tf2onnx", "onnxruntime")
NOISY_LOGGERS = ("absl", "tensorflow", "tf2onnx", "h5py", "matplotlib", "PIL", "alembic",
                 "mlflow")

# A table: title, column names, rows of already formatted cells.
Table = tuple[str, list[str], list[list[str]]]
Worker = Callable[[dict], dict]

log = logging.getLogger("benchmarks")


class BenchmarkError(RuntimeError):
    """A worker process failed; the message ends with the tail of its log."""


# -- arguments and entry point ----------------------------------------------------------


def parser(name: str, description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark has (sizes are added by each benchmark)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="1-2 trials, 1 epoch: checks that the benchmark runs; numbers mean nothing")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"folder for <name>.json and worker logs (default {DEFAULT_OUT})")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def entry(name: str, argv: Sequence[str] | None, p: argparse.ArgumentParser,
          workers: dict[str, Worker], measure: Callable[[argparse.Namespace, Path], dict],
          tables: Callable[[dict], list[Table]]) -> int:
    """Run a benchmark (or, with ``--worker``, one of its variants) and write its JSON.

    Args:
        name: the module name under ``benchmarks``.
        argv: command-line arguments (``None``: ``sys.argv[1:]``).
        p: the benchmark's parser (from :func:`parser` plus its sizes).
        workers: variant name -> function(params) -> JSON-able dict, run in a worker process.
        measure: function(args, out) -> results; runs the workers in interleaved order.
        tables: results -> tables to print (and to copy into the README).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    setup_logging()
    if args.worker:
        return serve_worker(args, workers)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, clock = dt.datetime.now(dt.UTC), time.perf_counter()
    results = measure(args, out)
    payload = {
        "benchmark": name,
        "command": " ".join(["python -m", f"benchmarks.{name}", *map(shlex.quote, argv)]),
        "tiny": bool(args.tiny),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 1),
        "machine": machine_info(),
        **results,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(clean(payload), indent=2, default=_jsonable) + "\n")
    for table in tables(payload):
        print_table(table)
    print(f"wrote {path}")
    return 0


def setup_logging() -> None:
    """INFO lines with a timestamp on stderr, as ``cnnsearch`` logs off a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s",
                                           "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- workers ---------------------------------------------------------------------------


def interleave(variants: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """``A B C A B C ...``: each repeat runs every variant once, in the same order."""
    return [(repeat, variant) for repeat in range(repeats) for variant in variants]


def run_interleaved(name: str, variants: Sequence[str], repeats: int,
                    params: Callable[[str, int], dict], out: Path) -> dict[str, list[dict]]:
    """Run every variant ``repeats`` times, interleaved, each in a fresh process.

    Args:
        name: the benchmark module that serves the workers.
        variants: worker names, in the order they alternate.
        repeats: how many times each runs.
        params: (variant, repeat) -> the worker's parameters.
        out: the benchmark's output folder (worker logs go to ``out/logs``).

    Returns:
        variant -> its results, in run order.
    """
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    order = interleave(variants, repeats)
    for index, (repeat, variant) in enumerate(order, start=1):
        log.info("%s: run %d/%d: %s (repeat %d)", name, index, len(order), variant, repeat + 1)
        result = run_worker(name, variant, params(variant, repeat), out / "logs",
                            tag=f"{index:02d}")
        runs[variant].append(result)
    return runs


def run_worker(name: str, variant: str, params: dict, log_dir: Path, tag: str = "",
               python: str | None = None, timeout: float | None = None) -> dict:
    """Run one variant in a fresh ``python -m benchmarks.<name> --worker <variant>``.

    The worker gets ``params`` plus ``workdir`` (a temporary folder, removed afterwards)
    and writes its result as JSON; its output goes to ``log_dir/<name>-<tag>-<variant>.log``.

    Raises:
        BenchmarkError: if the worker fails or writes no result.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    logfile = log_dir / f"{name}-{tag}-{variant}.log".replace("--", "-")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        result = Path(workdir) / "result.json"
        command = [python or sys.executable, "-m", f"benchmarks.{name}", "--worker", variant,
                   "--params", json.dumps({**params, "workdir": workdir}),
                   "--result", str(result)]
        started = time.perf_counter()
        with logfile.open("w") as stream:
            try:
                status = subprocess.run(command, cwd=REPO, env=env, stdout=stream,
                                        stderr=subprocess.STDOUT, timeout=timeout,
                                        check=False).returncode
            except subprocess.TimeoutExpired:
                status = "timeout"
        if status != 0 or not result.exists():
            raise BenchmarkError(f"worker {name}/{variant} failed (exit {status}); "
                                 f"last lines of {logfile}:\n{_tail(logfile)}")
        data = json.loads(result.read_text())
    data["process_seconds"] = time.perf_counter() - started
    return data


def serve_worker(args: argparse.Namespace, workers: dict[str, Worker]) -> int:
    """The worker side of :func:`run_worker`: run one variant, write its JSON result."""
    if args.worker not in workers:
        raise SystemExit(f"unknown worker {args.worker!r}; choose from {', '.join(workers)}")
    result = workers[args.worker](json.loads(args.params))
    Path(args.result).write_text(json.dumps(clean(result), default=_jsonable))
    return 0


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def clean(value: Any) -> Any:
    """NaN and infinities become None (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    return value


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths, anything else as its string."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# -- statistics ------------------------------------------------------------------------


def finite(values: Iterable[Any]) -> list[float]:
    """The values that are real finite numbers."""
    return [float(v) for v in values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def median(values: Iterable[Any]) -> float:
    """Median of the finite values; NaN if there are none."""
    good = finite(values)
    return statistics.median(good) if good else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if len(finite([numerator, denominator])) < 2 or not denominator:
        return math.nan
    return numerator / denominator


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (NaN with fewer than 2 points)."""
    if len(xs) < 2:
        return math.nan
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def first_reaching(times: Sequence[float], scores: Sequence[float | None],
                   threshold: float) -> float | None:
    """The first time at which the best score so far is >= ``threshold`` (None: never)."""
    best = -math.inf
    for when, score in zip(times, scores, strict=True):
        if score is not None and score > best:
            best = score
        if best >= threshold:
            return when
    return None


# -- formatting ------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3, suffix: str = "") -> str:
    """A number for a table; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}{suffix}"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def verdict(value: float, limit: float, at_most: bool = True) -> str:
    """``yes``/``no`` for a target (``n/a`` without a number)."""
    if not finite([value]):
        return "n/a"
    return "yes" if (value <= limit if at_most else value >= limit) else "no"


def print_table(table: Table) -> None:
    """Print a table with rich (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table as RichTable

    title, columns, rows = table
    rich_table = RichTable(title=title)
    for column in columns:
        rich_table.add_column(column)
    for row in rows:
        rich_table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(rich_table)


def markdown(table: Table) -> str:
    """A table as GitHub markdown, its title in bold above it."""
    title, columns, rows = table
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the machine -----------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, cores, memory, GPUs, OS, Python, Keras backend and package versions."""
    import psutil

    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }


def cpu_model() -> str:
    """``lscpu``'s model name, else /proc/cpuinfo's, else what ``platform`` knows."""
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """``nvidia-smi``'s GPU names and memory (empty without an NVIDIA GPU)."""
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


class GpuSampler:
    """``nvidia-smi``'s utilisation and memory every 0.5 s while the ``with`` block runs;
    afterwards :attr:`summary` holds the mean utilisation (%) and the peak memory (MiB)
    over all GPUs and samples (empty without an NVIDIA GPU)."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", "-lms", "500"]

    def __init__(self) -> None:
        self.summary: dict[str, float] = {}
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(self.QUERY, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            out, _ = self._process.communicate()
            self.summary = gpu_summary(out)


def gpu_summary(csv: str) -> dict[str, float]:
    """Mean utilisation and peak memory of ``nvidia-smi`` lines ``UTIL, MEMORY``."""
    samples = []
    for line in csv.splitlines():
        try:
            samples.append(tuple(float(field) for field in line.split(",")[:2]))
        except ValueError:   # a line cut off by the end of sampling
            continue
    if not samples:
        return {}
    return {"gpu_utilisation": statistics.fmean(u for u, _ in samples),
            "gpu_memory_mib": max(m for _, m in samples)}


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found
