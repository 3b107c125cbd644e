"""Memory: resident memory (RSS) after each trial of a default-space sweep.

N trials (default 30) of the default search space (conf/search_space/default.yaml),
default training except the epochs (default 5: the leak per trial, not the epochs, is
what this measures), for

* ``ours_local``: our sweep as ``cnnsearch sweep`` runs it by default (tracking=local);
* ``ours_none``: the same with tracking=none;
* ``keras_tuner``: plain ``keras_tuner.RandomSearch`` over the same space written with
  plain keras-tuner calls (benchmarks.variants.PlainHyperModel), same early stopping.

RSS is read with psutil after each trial (ours: ``TrialOutcome.rss_mb``; baseline:
an ``on_trial_end`` hook). The slope is the least-squares fit of RSS (MB) over trial
number 5..N (all trials when N < 10), median over the interleaved runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import common
from benchmarks.common import Table, fmt, median, verdict

NAME = "memory"
VARIANTS = ("ours_local", "ours_none", "keras_tuner")
TARGET = 5.0   # MB per trial
FIRST_TRIAL = 5


def ours(params: dict, tracking: str) -> dict:
    """Our default-space sweep (worker)."""
    from benchmarks import variants

    overrides = ["tuner=random", f"tuner.max_trials={params['trials']}",
                 f"seed={params['seed']}", f"training.epochs={params['epochs']}",
                 "final_fit.enabled=false", f"tracking={tracking}",
                 "tracking.experiment=bench", "tracking.registered_model=bench"]
    run = variants.run_ours(overrides, variants.workdir(params, "root"))
    return {"rss_mb": [t["rss_mb"] for t in run["trials"]],
            "status": [t["status"] for t in run["trials"]]}


def keras_tuner(params: dict) -> dict:
    """Plain keras-tuner RandomSearch over the default space (worker)."""
    from benchmarks import variants

    _, tuner = variants.run_plain_search(params, max_trials=params["trials"])
    return {"rss_mb": [r["rss_mb"] for r in tuner.records],
            "status": [r["status"] for r in tuner.records]}


WORKERS = {"ours_local": lambda p: ours(p, "local"), "ours_none": lambda p: ours(p, "none"),
           "keras_tuner": keras_tuner}


def fit_slope(rss: list[float]) -> tuple[float, int]:
    """MB per trial over trials FIRST_TRIAL..N (all when N < 10); and the first trial used."""
    first = FIRST_TRIAL if len(rss) >= 2 * FIRST_TRIAL else 1
    trials = list(range(first, len(rss) + 1))
    return common.slope(trials, rss[first - 1:]), first


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--trials", type=int, default=30, help="trials per run (default 30)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each variant, interleaved (default 2)")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs, args.repeats = 2, 1, 1
    # batch size and patience: the defaults of conf/training/default.yaml, for the baseline
    params = {"trials": args.trials, "epochs": args.epochs, "seed": args.seed,
              "batch_size": 32, "patience": 5}
    runs = common.run_interleaved(NAME, VARIANTS, args.repeats, lambda v, r: params, out)
    for results in runs.values():
        for run in results:
            run["slope_mb_per_trial"], run["first_trial"] = fit_slope(run["rss_mb"])
    summary = {variant: {
        "slope_mb_per_trial": median(r["slope_mb_per_trial"] for r in results),
        "first_rss_mb": median(r["rss_mb"][0] for r in results if r["rss_mb"]),
        "last_rss_mb": median(r["rss_mb"][-1] for r in results if r["rss_mb"]),
        "trials": median(len(r["rss_mb"]) for r in results),
        "first_trial": results[0]["first_trial"],
    } for variant, results in runs.items()}
    return {"params": {**params, "repeats": args.repeats}, "runs": runs, "summary": summary}


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    rows = [[variant, fmt(s["trials"], 0), f"{s['first_trial']}..{int(s['trials'])}",
             fmt(s["first_rss_mb"], 0), fmt(s["last_rss_mb"], 0),
             fmt(s["slope_mb_per_trial"], 2), f"<= {TARGET}",
             verdict(s["slope_mb_per_trial"], TARGET)]
            for variant, s in summary.items()]
    title = (f"memory: RSS after each trial, default space, {p['trials']} trials x "
             f"{p['epochs']} epochs; median of {p['repeats']} interleaved runs")
    return [(title, ["variant", "trials", "fitted over", "RSS after trial 1 MB",
                     "RSS after last MB", "MB per trial", "target", "met"], rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
