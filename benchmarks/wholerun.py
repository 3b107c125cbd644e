"""Whole run: `cnnsearch sweep` against a plain keras-tuner script, process start to exit.

What a user waits for: the same 5 trials x 8 epochs (``--trials``, ``--epochs``) of
one fixed network on digits (``benchmarks.variants.FIXED``; no early stopping, no
learning-rate drop, no pruning, no final fit: every variant trains the same network
for the same epochs, then evaluates the best on test and saves it), each command in a
fresh process, timed from its start to its exit: imports, data, search, finish and,
with tracking, every MLflow record and the logged, registered model. Variants:

* ``baseline``: ``benchmarks/plain_keras_tuner.py``, RandomSearch as a user writes it;
* ``none``: ``cnnsearch sweep tracking=none``;
* ``local``: ``tracking=local`` on a store that already holds sweeps (a user's usual case);
* ``local_new``: ``tracking=local`` creating its store (a user's first sweep).

Variants alternate, ``--repeats`` times; the table gives medians and ratios.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import REPO, Table, fmt, median, ratio, verdict

NAME = "wholerun"
VARIANTS = ("baseline", "none", "local", "local_new")
TARGETS = {"none": 1.03, "local": 1.05}
CNNSEARCH = [sys.executable, "-m", "cnnsearch", "sweep"]
MARKER = ".benchmarks-wholerun"


def ours(params: dict, tracking: str, root: str) -> list[str]:
    """The ``cnnsearch sweep`` command of a variant."""
    from benchmarks import variants

    return [*CNNSEARCH, *variants.fixed_overrides(params["trials"]), "tuner=random",
            f"tuner.max_trials={params['trials']}", f"training.epochs={params['epochs']}",
            "training.early_stopping_patience=null", "training.reduce_lr_patience=null",
            "tuner.pruning=none", "final_fit.enabled=false", f"seed={params['seed']}",
            f"tracking={tracking}", f"paths.root={root}",
            f"sweep.name=wholerun-{params['run']}", "sweep.resume=false"]


def command(variant: str, params: dict) -> list[str]:
    workdir = Path(params["workdir"])
    if variant == "baseline":
        return [sys.executable, str(REPO / "benchmarks" / "plain_keras_tuner.py"),
                f"--trials={params['trials']}", f"--epochs={params['epochs']}",
                f"--seed={params['seed']}", f"--dir={workdir / 'plain'}"]
    if variant == "local":
        return ours(params, "local", params["store_root"])
    return ours(params, "none" if variant == "none" else "local", str(workdir / "root"))


def timed(variant: str):
    """A worker that runs the variant's command and times it."""
    def run(params: dict) -> dict:
        argv = command(variant, params)   # before the clock: it imports our benchmark code
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return {"seconds": seconds}
    return run


WORKERS = {variant: timed(variant) for variant in VARIANTS}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of each variant, interleaved (default 5)")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs, args.repeats = 1, 1, 1
    store_root = out / "wholerun-store"   # the store `local` finds already there
    marker = store_root / MARKER
    if store_root.exists():   # only a folder this benchmark made is ever removed
        if not marker.is_file():
            raise common.BenchmarkError(f"{store_root} exists and was not made by this "
                                        "benchmark; remove it or choose another --out")
        shutil.rmtree(store_root)
    store_root.mkdir(parents=True)
    marker.write_text("made by python -m benchmarks.wholerun; removed by its next run\n")
    params = {"trials": args.trials, "epochs": args.epochs, "seed": args.seed,
              "store_root": str(store_root)}
    warm_up = timed("local")({**params, "workdir": str(out), "run": "warm-up"})
    runs = common.run_interleaved(NAME, VARIANTS, args.repeats,
                                  lambda v, r: {**params, "run": f"{v}-{r}"}, out)
    return {"params": {**params, "repeats": args.repeats}, "warm_up_seconds": warm_up,
            "runs": runs, "summary": summarise(runs)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {variant: {"seconds": median(r["seconds"] for r in results),
                         "spread": [min(r["seconds"] for r in results),
                                    max(r["seconds"] for r in results)]}
               for variant, results in runs.items()}
    base = summary["baseline"]["seconds"]
    for variant in summary:
        summary[variant]["ratio"] = ratio(summary[variant]["seconds"], base)
    return summary


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    rows = []
    for variant in VARIANTS:
        s = summary[variant]
        target = TARGETS.get(variant)
        rows.append([variant, fmt(s["seconds"], 2),
                     f"{fmt(s['spread'][0], 2)} - {fmt(s['spread'][1], 2)}",
                     "1 (reference)" if variant == "baseline" else fmt(s["ratio"]),
                     f"<= {target}" if target else "",
                     verdict(s["ratio"], target) if target else ""])
    title = (f"wholerun: seconds from process start to exit, median of {p['repeats']} "
             f"interleaved runs ({p['trials']} trials x {p['epochs']} epochs, digits)")
    return [(title, ["variant", "seconds", "min - max", "ratio to baseline", "target", "met"],
             rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
