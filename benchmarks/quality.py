"""Search quality per budget: test accuracy reached on digits within a wall-clock budget.

Per seed (the repeats), every variant runs once, in this order, each in a fresh process:

* ``svm``: anchor, scikit-learn ``SVC()`` (RBF, defaults) on flattened train + validation;
* ``random``, ``bayesian``, ``hyperband``: our sweeps of the default space with
  ``tuner.max_seconds=<budget>`` (no trial starts after it), default training
  (30 epochs, early stopping 5), tracking=none, then the final fit on train +
  validation and one test evaluation;
* ``keras_tuner``: plain ``keras_tuner.RandomSearch`` over the same space written with
  plain keras-tuner calls, the same budget rule and training, then the same final
  fit (best trial's epochs on train + validation) and one test evaluation;
* ``cnn2``: anchor, a hand-written 2-conv CNN trained on train + validation for
  ``training.epochs`` (30), the most epochs our final fit gives a candidate;
* ``autokeras``: ``autokeras.ImageClassifier`` with the same budget rule (and, as ours,
  its running trial ends with the budget: see ``autokeras_search``), run by a separate
  virtualenv's Python (``--autokeras-python``); trained on train with our validation
  split, then AutoKeras' own final fit on train + validation.

Reported: the median over seeds of the test accuracy, the best validation accuracy,
the total wall time (search + final fit + test; it exceeds the budget by the last
trial and the final fit) and the time to 98% / 99%: the elapsed search time at the
end of the first trial whose validation accuracy brings the best so far to >= 98% /
99% (validation, not test: the search never sees test); "never" when the median
seed never got there.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks import autokeras_search, common
from benchmarks.common import BenchmarkError, Table, first_reaching, fmt, median

NAME = "quality"
SEARCHES = ("random", "bayesian", "hyperband", "keras_tuner", "autokeras")
THRESHOLDS = (0.98, 0.99)


def _curve(times: list[float], scores: list[float | None]) -> dict:
    return {"trial_ends": times, "trial_val_accuracy": scores,
            **{f"time_to_{round(t * 100)}": first_reaching(times, scores, t) for t in THRESHOLDS}}


def ours(params: dict, tuner: str) -> dict:
    """Our sweep with a time budget (worker)."""
    from benchmarks import variants

    overrides = [f"tuner={tuner}", f"seed={params['seed']}", "tracking=none",
                 f"tuner.max_seconds={params['budget']}"]
    if tuner == "hyperband":   # its own budget is iterations: make the clock the limit
        overrides += ["tuner.hyperband_iterations=1000"]
        if params["tiny"]:
            overrides += ["tuner.max_epochs=2"]
    else:
        overrides += ["tuner.max_trials=100000"]
    overrides += [f"training.epochs={params['epochs']}"]
    run = variants.run_ours(overrides, variants.workdir(params, "root"))
    trials = run["trials"]
    return {"test_accuracy": run["sweep"]["test_accuracy"],
            "best_val_accuracy": run["sweep"]["best_val_accuracy"],
            "n_trials": len(trials), "epochs_total": sum(t["epochs_run"] for t in trials),
            "search_seconds": run["search_seconds"], "total_seconds": run["total_seconds"],
            "architecture": run["sweep"]["architecture"],
            **_curve([t["ended"] for t in trials], [t["best_val_accuracy"] for t in trials])}


def keras_tuner(params: dict) -> dict:
    """Plain keras-tuner RandomSearch with the same budget rule (worker)."""
    from benchmarks import variants

    data, tuner = variants.run_plain_search(params, max_trials=100000,
                                            max_seconds=params["budget"])
    records = tuner.records
    search_seconds = records[-1]["ended"] if records else 0.0
    test_accuracy = variants.final_fit_and_test(tuner, data, params["batch_size"])
    best = tuner.oracle.get_best_trials(1)[0]
    return {"test_accuracy": test_accuracy,
            "best_val_accuracy": float(best.metrics.get_best_value("val_accuracy")),
            "n_trials": len(records), "epochs_total": sum(r["epochs_run"] for r in records),
            "search_seconds": search_seconds,
            "total_seconds": time.perf_counter() - tuner.started,
            **_curve([r["ended"] for r in records], [r["best_val_accuracy"] for r in records])}


def svm(params: dict) -> dict:
    """Anchor: an RBF SVM on flattened pixels (worker); also writes the split for AutoKeras."""
    import numpy as np
    from sklearn.svm import SVC

    from benchmarks import variants

    data = variants.digits(params["seed"])
    if params.get("split_file"):
        np.savez(params["split_file"], x_train=data.x_train, y_train=data.y_train,
                 x_val=data.x_val, y_val=data.y_val, x_test=data.x_test, y_test=data.y_test)
    started = time.perf_counter()
    x = np.concatenate([data.x_train, data.x_val]).reshape(-1, int(np.prod(data.input_shape)))
    y = np.concatenate([data.y_train, data.y_val])
    model = SVC().fit(x, y)
    accuracy = float(model.score(data.x_test.reshape(len(data.x_test), -1), data.y_test))
    return {"test_accuracy": accuracy, "total_seconds": time.perf_counter() - started}


def cnn2(params: dict) -> dict:
    """Anchor: a hand-written 2-conv CNN on train + validation (worker)."""
    import keras
    import numpy as np

    from benchmarks import variants

    data = variants.digits(params["seed"])
    keras.utils.set_random_seed(params["seed"])
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(shape=data.input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dropout(0.5),
        layers.Dense(data.num_classes, activation="softmax"),
    ])
    variants.compile_plain(model)
    started = time.perf_counter()
    model.fit(np.concatenate([data.x_train, data.x_val]),
              np.concatenate([data.y_train, data.y_val]),
              epochs=params["epochs"], batch_size=params["batch_size"], verbose=0)
    accuracy = float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])
    return {"test_accuracy": accuracy, "total_seconds": time.perf_counter() - started,
            "epochs": params["epochs"]}


def autokeras(params: dict) -> dict:
    """AutoKeras' ImageClassifier with the same budget rule (worker, AutoKeras' venv)."""
    run = autokeras_search.search(params)
    records = run["records"]
    scores = [r["best_val_accuracy"] for r in records]
    return {"test_accuracy": run["test_accuracy"],
            "best_val_accuracy": max(common.finite(scores), default=None),
            "n_trials": len(records), "epochs_total": sum(r["epochs_run"] for r in records),
            "search_seconds": records[-1]["ended"] if records else 0.0,
            "total_seconds": run["total_seconds"], "autokeras": run["version"],
            **_curve([r["ended"] for r in records], scores)}


WORKERS = {"random": lambda p: ours(p, "random"), "bayesian": lambda p: ours(p, "bayesian"),
           "hyperband": lambda p: ours(p, "hyperband"), "keras_tuner": keras_tuner,
           "svm": svm, "cnn2": cnn2, "autokeras": autokeras}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--budget-seconds", type=float, default=300.0,
                   help="search budget per run (default 300 s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="one run of each variant per seed, interleaved (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=30,
                   help="training.epochs for every search and the 2-conv CNN (default 30)")
    p.add_argument("--variants", nargs="+", choices=["svm", "random", "bayesian", "hyperband",
                                                     "keras_tuner", "cnn2"],
                   default=["svm", "random", "bayesian", "hyperband", "keras_tuner", "cnn2"],
                   help="which to run (default all; AutoKeras with --autokeras-python)")
    p.add_argument("--autokeras-python", default=os.environ.get("AUTOKERAS_PYTHON"),
                   help="python of a virtualenv with autokeras (default $AUTOKERAS_PYTHON); "
                        "without it AutoKeras is not run")
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    if args.tiny:
        args.budget_seconds, args.seeds, args.epochs = 1.0, args.seeds[:1], 1
    order = args.variants
    runs: dict[str, list[dict]] = {name: [] for name in order}
    autokeras_reason = autokeras_search.unavailable(args.autokeras_python)
    if autokeras_reason is None:
        runs["autokeras"] = []
    base = {"budget": args.budget_seconds, "epochs": args.epochs, "batch_size": 32,
            "patience": 5, "tiny": args.tiny}
    split_dir = out / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(args.seeds, start=1):
        params = {**base, "seed": seed, "split_file": str(split_dir / f"digits-seed{seed}.npz")}
        for variant in order:
            common.log.info("quality: seed %s (%d/%d): %s", seed, index, len(args.seeds),
                            variant)
            runs[variant].append(common.run_worker(NAME, variant, params, out / "logs",
                                                   tag=f"seed{seed}"))
        if "autokeras" in runs:
            try:
                runs["autokeras"].append(common.run_worker(
                    NAME, "autokeras", params, out / "logs", tag=f"seed{seed}",
                    python=args.autokeras_python))
            except BenchmarkError as error:
                autokeras_reason = f"AutoKeras failed: {_last_line(str(error))}"
                common.log.warning("%s", autokeras_reason)
                del runs["autokeras"]
    return {"params": {**base, "seeds": args.seeds}, "runs": runs,
            "summary": summarise(runs), "autokeras": autokeras_reason or "ran"}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _time_median(values: list) -> float | None:
    """Median where None is 'never' (infinite); None if the median is never."""
    if not values:
        return None
    middle = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(middle) else middle


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for variant, results in runs.items():
        s = {key: median(r.get(key) for r in results) for key in (
            "test_accuracy", "best_val_accuracy", "total_seconds", "search_seconds",
            "n_trials", "epochs_total")}
        for threshold in THRESHOLDS:
            key = f"time_to_{round(threshold * 100)}"
            if results and key in results[0]:
                s[key] = _time_median([r[key] for r in results])
                s[f"{key}_reached"] = f"{sum(r[key] is not None for r in results)}/{len(results)}"
        summary[variant] = s
    return summary


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    rows = []
    for variant, s in summary.items():
        kind = "search" if variant in SEARCHES else "anchor"
        times = [f"{fmt(s.get(k), 0)} ({s[k + '_reached']})" if k + "_reached" in s else ""
                 for k in ("time_to_98", "time_to_99")]
        rows.append([variant, kind, fmt(s["test_accuracy"], 4), fmt(s["best_val_accuracy"], 4),
                     *[t.replace("n/a", "never") for t in times], fmt(s["n_trials"], 0),
                     fmt(s["search_seconds"], 0), fmt(s["total_seconds"], 0)])
    title = (f"quality: digits, budget {p['budget']:g} s per search, median over seeds "
             f"{' '.join(map(str, p['seeds']))}; AutoKeras: {payload['autokeras']}")
    return [(title, ["variant", "kind", "test acc", "best val acc", "time to 98% val s",
                     "time to 99% val s", "trials", "search s", "total s"], rows)]


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
