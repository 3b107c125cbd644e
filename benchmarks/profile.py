"""Profile: where a trial's time goes, under cProfile, for the overhead benchmark's variants.

Each variant of ``benchmarks.overhead`` (``baseline``: plain keras-tuner; ``none`` and
``local``: our sweep without and with MLflow) runs once, in a fresh process, under
``cProfile``. The table gives the cumulative seconds per trial of the known hot spots
(a row's calls include those nested in it: ``clear_session`` runs one ``gc.collect``).
The profiler slows Python-heavy code more than TensorFlow's kernels, so compare the
rows, not these totals with the overhead table. The full profiles are kept as
``<out>/profiles/<variant>.prof`` (``python -m pstats`` or snakeviz reads them).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from benchmarks import common
from benchmarks.common import Table, fmt

NAME = "profile"
VARIANTS = ("baseline", "none", "local")

# label -> (a piece of the file path, or "" for built-ins; function names)
HOTSPOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "model.fit": ("keras/src/backend/", ("fit",)),
    "model.evaluate (validation in fit; test once)": ("keras/src/backend/", ("evaluate",)),
    "build + compile a trial's model": ("keras_tuner/src/engine/tuner.py", ("_try_build",)),
    "keras.backend.clear_session": ("keras/src/backend/common/global_state.py",
                                    ("clear_session",)),
    "gc.collect (all callers)": ("", ("<built-in method gc.collect>",)),
    "best-epoch checkpoint writes": ("keras_tuner/src/engine/tuner_utils.py", ("_save_model",)),
    "MLflow recorder, per-trial events": ("tracking/runs.py",
                                          ("trial_started", "epoch_ended", "trial_ended")),
    "keras-tuner oracle + trial bookkeeping": ("keras_tuner/src/engine/base_tuner.py",
                                               ("on_trial_end",)),
}


def profiled(params: dict, variant: str) -> dict:
    """One overhead run under cProfile (worker)."""
    import cProfile
    import pstats

    from benchmarks import overhead

    profiler = cProfile.Profile()
    result = profiler.runcall(overhead.WORKERS[variant], params)
    folder = Path(params["profiles"])
    folder.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(folder / f"{variant}.prof")
    stats = pstats.Stats(profiler).stats
    trials = result["n_trials"] or 1
    hotspots = {}
    for label, (where, names) in HOTSPOTS.items():
        hotspots[label] = sum(cumulative for (path, _, function), (_, _, _, cumulative, _)
                              in stats.items()
                              if function in names and where in path.replace("\\", "/"))
        hotspots[label] /= trials
    return {"n_trials": result["n_trials"], "per_trial_seconds": result["per_trial_seconds"],
            "hotspots": hotspots}


WORKERS = {variant: functools.partial(profiled, variant=variant) for variant in VARIANTS}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--trials", type=int, default=5, help="trials per run (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs = 2, 1
    params = {"trials": args.trials, "epochs": args.epochs, "batch_size": args.batch_size,
              "seed": args.seed, "profiles": str(out / "profiles")}
    runs = common.run_interleaved(NAME, VARIANTS, 1, lambda v, r: params, out)
    summary = {variant: {"per_trial_seconds": result["per_trial_seconds"], **result["hotspots"]}
               for variant, (result,) in runs.items()}
    return {"params": params, "runs": runs, "summary": summary}


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    variants = [v for v in VARIANTS if v in summary]
    rows = [["search phase, s/trial (under the profiler)",
             *(fmt(summary[v]["per_trial_seconds"]) for v in variants)]]
    rows += [[label, *(fmt(summary[v][label]) for v in variants)] for label in HOTSPOTS]
    title = (f"profile: cumulative seconds per trial under cProfile, overhead workload "
             f"({p['trials']} trials x {p['epochs']} epochs, batch {p['batch_size']})")
    return [(title, ["", *variants], rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
