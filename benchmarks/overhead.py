"""Overhead: wall time per trial of `cnnsearch sweep` vs plain keras-tuner + Keras.

The same N trials of one fixed architecture (benchmarks.variants.FIXED: every trial
trains the identical network for the same epochs on digits, no early stopping), run by

* ``none``: our sweep, ``tracking=none``;
* ``local``: our sweep, ``tracking=local`` (the MLflow recorder on a fresh sqlite store);
* ``baseline``: ``keras_tuner.RandomSearch`` over an inline Keras model of the same
  architecture (``benchmarks.variants.InlineHyperModel``).

keras-tuner never repeats a set of values, so a single-valued space stops after one
trial; both sides draw the learning rate from the same list of near-identical values
(1e-3 .. 1.0006e-3, same compute per trial). Measured: the search phase only, from
the sweep's start to the end of its last trial (ours: first sweep_started observer to
last trial_ended observer; baseline: ``search()`` call to the last ``on_trial_end``),
divided by N. Reported beside it: creating the MLflow recorder, the finish (best
model, test evaluation, saving) and the observers' end of sweep (MLflow model
logging and registration). Each run is a fresh process; variants alternate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import common
from benchmarks.common import Table, fmt, median, ratio, verdict

NAME = "overhead"
VARIANTS = ("baseline", "none", "local")
TARGETS = {"none": 1.03, "local": 1.05}


def ours(params: dict, tracking: str) -> dict:
    """Our sweep of the fixed architecture (worker)."""
    from benchmarks import variants

    overrides = [*variants.fixed_overrides(params["trials"]), "tuner=random",
                 f"tuner.max_trials={params['trials']}", f"seed={params['seed']}",
                 f"training.epochs={params['epochs']}",
                 f"training.batch_size={params['batch_size']}",
                 "training.early_stopping_patience=null", "final_fit.enabled=false",
                 f"tracking={tracking}", "tracking.experiment=bench",
                 "tracking.registered_model=bench"]
    run = variants.run_ours(overrides, variants.workdir(params, "root"))
    return {**_summary(run["trials"], run["search_seconds"]),
            **{k: run[k] for k in ("setup_seconds", "finish_seconds", "observers_end_seconds",
                                   "total_seconds")},
            "sweep": run["sweep"]}


def baseline(params: dict) -> dict:
    """Plain keras-tuner RandomSearch over the inline model (worker)."""
    import keras

    from benchmarks import variants

    data = variants.digits(params["seed"])
    keras.utils.set_random_seed(params["seed"])
    hypermodel = variants.InlineHyperModel(variants.learning_rates(params["trials"]),
                                           data.input_shape, data.num_classes)
    tuner = variants.PlainRandomSearch(
        hypermodel, objective="val_accuracy", max_trials=params["trials"],
        seed=params["seed"], directory=variants.workdir(params, "tuner"),
        project_name="baseline", overwrite=True)
    tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                 epochs=params["epochs"], batch_size=params["batch_size"], verbose=0)
    records = tuner.records
    return _summary(records, records[-1]["ended"] if records else 0.0)


def _summary(trials: list[dict], search_seconds: float) -> dict:
    return {"n_trials": len(trials), "search_seconds": search_seconds,
            "per_trial_seconds": search_seconds / len(trials) if trials else None,
            "epochs_run": [t["epochs_run"] for t in trials],
            "trial_ends": [t["ended"] for t in trials]}


WORKERS = {"baseline": baseline, "none": lambda p: ours(p, "none"),
           "local": lambda p: ours(p, "local")}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--trials", type=int, default=10, help="trials per run (default 10)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5,
                   help="runs of each variant, interleaved (default 5)")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.trials, args.epochs, args.repeats = 2, 1, 1
    params = {"trials": args.trials, "epochs": args.epochs, "batch_size": args.batch_size,
              "seed": args.seed}
    runs = common.run_interleaved(NAME, VARIANTS, args.repeats, lambda v, r: params, out)
    return {"params": {**params, "repeats": args.repeats}, "runs": runs,
            "summary": summarise(runs)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per variant and the ratios to the baseline."""
    summary: dict = {}
    for variant, results in runs.items():
        summary[variant] = {key: median(r.get(key) for r in results) for key in (
            "per_trial_seconds", "search_seconds", "setup_seconds", "finish_seconds",
            "observers_end_seconds", "total_seconds")}
        summary[variant]["n_trials"] = median(r["n_trials"] for r in results)
    base = summary.get("baseline", {}).get("per_trial_seconds")
    summary["ratios"] = {variant: ratio(summary[variant]["per_trial_seconds"], base)
                         for variant in runs if variant != "baseline"}
    if "none" in summary and "local" in summary:
        summary["tracking_per_trial_seconds"] = (summary["local"]["per_trial_seconds"]
                                                 - summary["none"]["per_trial_seconds"])
    return summary


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    rows = []
    for variant in VARIANTS:
        if variant not in summary:
            continue
        s = summary[variant]
        target = TARGETS.get(variant)
        share = summary["ratios"].get(variant)
        rows.append([variant, fmt(s["n_trials"], 0), fmt(s["per_trial_seconds"]),
                     fmt(share) if share is not None else "1 (reference)",
                     f"<= {target}" if target else "", verdict(share, target) if target else "",
                     fmt(s["setup_seconds"], 2), fmt(s["finish_seconds"], 2),
                     fmt(s["observers_end_seconds"], 2)])
    title = (f"overhead: seconds per trial, search phase, median of {p['repeats']} "
             f"interleaved runs ({p['trials']} trials x {p['epochs']} epochs, batch "
             f"{p['batch_size']})")
    return [(title, ["variant", "trials", "s/trial", "ratio to baseline", "target", "met",
                     "recorder setup s", "finish s", "end-of-sweep observers s"], rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
