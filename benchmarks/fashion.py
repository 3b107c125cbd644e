"""Search quality on Fashion-MNIST at equal wall-clock budgets: the headline benchmark.

Per seed, every searcher runs once, in a fresh process, one after another (never two
at once), on the same split of the real Fashion-MNIST (Debian's dataset-fashion-mnist
or data.path): ``--limit`` training images, 6,000 validation images (10% of the 60,000),
the 10,000 test images. The same rule for all:

* the budget starts when the search starts (imports and data loading excluded); no
  trial starts after it;
* then the winner is re-trained on train + validation for its best epoch count and
  evaluated once on test.

Searchers:

* ``ours``: the default command, ``cnnsearch sweep data=fashion_mnist data.limit=N
  tuner.max_seconds=B`` (default space, training, tracking=local and its pruning; the
  running trial also ends with the budget, a feature of ours);
* ``ours_bayesian``, ``ours_hyperband``: the same with ``tuner=bayesian|hyperband``;
* ``keras_tuner``, ``keras_tuner_hyperband``: plain keras-tuner RandomSearch / Hyperband
  scripts as a user writes them (``variants.USER_SPACE``, 30 epochs, early stopping 5,
  batch 32);
* ``optuna``: an Optuna script over the same user space and training, TPE sampler and
  median pruner fed each epoch's validation accuracy, ``study.optimize(timeout=B)``;
* ``autokeras``: ``autokeras.ImageClassifier`` (``--autokeras-python``: its own
  virtualenv) on the same split with the user training (30 epochs, early stopping 5,
  batch 32), no trial started after the budget and, as ours, the running trial ended
  with it (``autokeras_search``), then AutoKeras' own final fit.

Reported per searcher: median (and min-max) over seeds of the test accuracy, the best
validation accuracy, trials, total wall time, and the time to reach 90% validation
accuracy (end of the first trial whose best brings the best so far to >= 0.90; from
the search start). A PNG plots the best validation accuracy so far against wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks import autokeras_search, common
from benchmarks.common import REPO, Table, first_reaching, fmt, median

NAME = "fashion"
SEARCHERS = ("ours", "ours_bayesian", "ours_hyperband", "keras_tuner",
             "keras_tuner_hyperband", "optuna", "autokeras")
DEFAULT_SEARCHERS = ("ours", "keras_tuner", "optuna")
THRESHOLD = 0.90
PLOT = REPO / "benchmarks" / "fashion-time-to-accuracy.png"
# Published anchors, full 60,000 training images (not re-run here):
# github.com/zalandoresearch/fashion-mnist, README, "Benchmark" section.
ANCHORS = (("scikit-learn, best of the authors' benchmark (SVC, C=10, RBF)", 0.897),
           ("2 Conv+pooling, TensorFlow's tutorial CNN (benchmark/convnet.py)", 0.916))


def _data(params: dict):
    from cnnsearch.search.config import DataConfig
    from cnnsearch.search.data.datasets import load_dataset

    return load_dataset(DataConfig("fashion_mnist", limit=params["limit"]), params["seed"])


def _result(test_accuracy: float, records: list[dict], total: float, **extra) -> dict:
    times = [r["ended"] for r in records]
    scores = [r["best_val_accuracy"] for r in records]
    return {"test_accuracy": test_accuracy,
            "best_val_accuracy": max(common.finite(scores), default=None),
            "n_trials": len(records), "epochs_total": sum(r["epochs_run"] for r in records),
            "search_seconds": times[-1] if times else 0.0, "total_seconds": total,
            "trial_ends": times, "trial_val_accuracy": scores,
            "time_to_90": first_reaching(times, scores, THRESHOLD), **extra}


def ours(params: dict, tuner: str = "random") -> dict:
    """The default command with a time budget (worker)."""
    from benchmarks import variants

    overrides = ["data=fashion_mnist", f"data.limit={params['limit']}", f"tuner={tuner}",
                 f"seed={params['seed']}", f"tuner.max_seconds={params['budget']}"]
    overrides += (["tuner.hyperband_iterations=1000"] if tuner == "hyperband"
                  else ["tuner.max_trials=100000"])
    overrides += params.get("ours_overrides", [])
    run = variants.run_ours(overrides, variants.workdir(params, "root"))
    return _result(run["sweep"]["test_accuracy"], run["trials"], run["total_seconds"],
                   architecture=run["sweep"]["architecture"])


def keras_tuner(params: dict, hyperband: bool = False) -> dict:
    """A plain keras-tuner script (worker)."""
    from benchmarks import variants

    training = variants.USER_TRAINING
    params = {**params, "epochs": params.get("epochs") or training["epochs"],
              "patience": training["patience"], "batch_size": training["batch_size"]}
    started = time.perf_counter()
    data, tuner = variants.run_plain_search(params, max_trials=100000,
                                            max_seconds=params["budget"], data=_data(params),
                                            space=variants.USER_SPACE, hyperband=hyperband)
    test_accuracy = variants.final_fit_and_test(tuner, data, params["batch_size"])
    return _result(test_accuracy, tuner.records, time.perf_counter() - started)


def optuna_tpe(params: dict) -> dict:
    """An Optuna script: TPE + median pruning on per-epoch val_accuracy (worker)."""
    import keras
    import numpy as np
    import optuna

    from benchmarks import variants

    data = _data(params)
    training = variants.USER_TRAINING
    epochs = params.get("epochs") or training["epochs"]
    space = variants.USER_SPACE
    keras.utils.set_random_seed(params["seed"])
    records: list[dict] = []

    def suggest(trial: optuna.Trial, key: str, name: str):
        spec = space[key]
        if isinstance(spec, list):
            return trial.suggest_categorical(name, spec)
        if all(isinstance(spec.get(k, 1), int) for k in ("min", "max", "step")):
            return trial.suggest_int(name, spec["min"], spec["max"], step=spec.get("step", 1))
        return trial.suggest_float(name, spec["min"], spec["max"], step=spec.get("step"),
                                   log=spec.get("sampling") == "log")

    class Report(keras.callbacks.Callback):
        def __init__(self, trial: optuna.Trial) -> None:
            super().__init__()
            self.trial, self.scores = trial, []

        def on_epoch_end(self, epoch, logs=None):
            self.scores.append(logs["val_accuracy"])
            self.trial.report(logs["val_accuracy"], epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned()

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        model = variants.build_plain_model(lambda key, name: suggest(trial, key, name),
                                           data.input_shape, data.num_classes)
        report = Report(trial)
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                             patience=training["patience"])
        try:
            model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                      epochs=epochs, batch_size=training["batch_size"],
                      callbacks=[stop, report], verbose=0)
        finally:
            records.append({"ended": time.perf_counter() - started,
                            "best_val_accuracy": max(report.scores, default=None),
                            "epochs_run": len(report.scores)})
        trial.set_user_attr("epochs", int(np.argmax(report.scores)) + 1)
        return max(report.scores)

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=params["seed"]),
                                pruner=optuna.pruners.MedianPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    study.optimize(objective, timeout=params["budget"])
    best = study.best_trial
    keras.backend.clear_session()
    model = variants.build_plain_model(lambda key, name: best.params[name],
                                       data.input_shape, data.num_classes)
    model.fit(np.concatenate([data.x_train, data.x_val]),
              np.concatenate([data.y_train, data.y_val]),
              epochs=best.user_attrs["epochs"], batch_size=training["batch_size"], verbose=0)
    test_accuracy = float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])
    return _result(test_accuracy, records, time.perf_counter() - started,
                   optuna=optuna.__version__)


def autokeras_inputs(params: dict) -> dict:
    """Write this seed's split to ``params['split_file']`` for AutoKeras (worker); returns
    the user training it gets (its virtualenv cannot import ours)."""
    import numpy as np

    from benchmarks import variants

    data = _data(params)
    np.savez(params["split_file"], x_train=data.x_train, y_train=data.y_train,
             x_val=data.x_val, y_val=data.y_val, x_test=data.x_test, y_test=data.y_test)
    return {key: params.get(key) or value for key, value in variants.USER_TRAINING.items()}


def autokeras(params: dict) -> dict:
    """AutoKeras' ImageClassifier with the same budget rule (worker, AutoKeras' venv)."""
    run = autokeras_search.search(params)
    return _result(run["test_accuracy"], run["records"], run["total_seconds"],
                   autokeras=run["version"])


WORKERS = {"ours": ours, "ours_bayesian": lambda p: ours(p, "bayesian"),
           "ours_hyperband": lambda p: ours(p, "hyperband"), "keras_tuner": keras_tuner,
           "keras_tuner_hyperband": lambda p: keras_tuner(p, hyperband=True),
           "optuna": optuna_tpe, "autokeras_inputs": autokeras_inputs,
           "autokeras": autokeras}


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(NAME, __doc__)
    p.add_argument("--budget-seconds", type=float, default=600.0,
                   help="search budget per run (default 600 s)")
    p.add_argument("--limit", type=int, default=12000,
                   help="training images (data.limit; default 12000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--searchers", nargs="+", choices=SEARCHERS, default=list(DEFAULT_SEARCHERS))
    p.add_argument("--ours-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more overrides for ours (e.g. tracking=none where MLflow is missing)")
    p.add_argument("--plot", default=str(PLOT),
                   help=f"the time-to-accuracy PNG (default {PLOT.relative_to(REPO)})")
    p.add_argument("--autokeras-python", default=os.environ.get("AUTOKERAS_PYTHON"),
                   help="python of a virtualenv with autokeras (default $AUTOKERAS_PYTHON), "
                        "for --searchers autokeras")
    p.add_argument("--partial", metavar="FILE", nargs="+",
                   help="runs nothing: the results of runs stopped early or run a seed at "
                        "a time, from their fashion-partial.json files in seed order (the "
                        "seeds every searcher finished)")
    return p


def measure(args: argparse.Namespace, out: Path) -> dict:
    base = {"budget": args.budget_seconds, "limit": args.limit,
            "ours_overrides": args.ours_overrides}
    if args.partial:
        return from_partial([Path(p) for p in args.partial], base, args.seeds,
                            Path(args.plot))
    if args.tiny:   # the code paths only: 1 epoch per trial, a moment of budget
        base = {"budget": 1.0, "limit": 200, "epochs": 1,
                "ours_overrides": ["training.epochs=1", "final_fit.epochs=1",
                                   *args.ours_overrides]}
        args.seeds = args.seeds[:1]
    if "autokeras" in args.searchers and (why := autokeras_search.unavailable(
            args.autokeras_python)):
        raise SystemExit(f"--searchers autokeras: {why}")
    runs: dict[str, list[dict]] = {name: [] for name in args.searchers}
    for index, seed in enumerate(args.seeds, start=1):   # seed-major: balanced if cut short
        for searcher in args.searchers:
            common.log.info("fashion: seed %s (%d/%d): %s", seed, index, len(args.seeds),
                            searcher)
            params, python = {**base, "seed": seed}, None
            if searcher == "autokeras":
                params["split_file"] = str(out / "splits" / f"fashion-seed{seed}.npz")
                Path(params["split_file"]).parent.mkdir(parents=True, exist_ok=True)
                training = common.run_worker(NAME, "autokeras_inputs", params, out / "logs",
                                             tag=f"seed{seed}")
                params |= {key: training[key] for key in ("epochs", "patience", "batch_size")}
                python = args.autokeras_python
            runs[searcher].append(common.run_worker(NAME, searcher, params, out / "logs",
                                                    tag=f"seed{seed}", python=python))
            (out / "fashion-partial.json").write_text(json.dumps(runs, default=str))
    if not args.tiny:
        plot(runs, base, Path(args.plot))
    return {"params": {**base, "seeds": args.seeds}, "runs": runs,
            "summary": summarise(runs), "anchors": ANCHORS}


def from_partial(paths: list[Path], base: dict, seeds: list[int], plot_path: Path) -> dict:
    """The results of runs that each did some of the seeds (stopped early, or run a seed
    at a time), from their fashion-partial.json files given in seed order.

    Keeps the seeds every searcher finished; ``started`` is when the first file's run
    began and ``seconds`` the workers' summed process time.
    """
    runs: dict[str, list[dict]] = {}
    for path in paths:
        for searcher, results in json.loads(path.read_text()).items():
            runs.setdefault(searcher, []).extend(results)
    done = min(len(results) for results in runs.values())
    runs = {searcher: results[:done] for searcher, results in runs.items()}
    plot(runs, base, plot_path)
    seconds = sum(r.get("process_seconds", 0.0) for results in runs.values() for r in results)
    first = json.loads(paths[0].read_text())
    first_seconds = sum(r.get("process_seconds", 0.0) for rs in first.values() for r in rs)
    ended = dt.datetime.fromtimestamp(paths[0].stat().st_mtime, dt.UTC)
    payload = {"params": {**base, "seeds": seeds[:done]}, "runs": runs,
               "summary": summarise(runs), "anchors": ANCHORS,
               "started": (ended - dt.timedelta(seconds=first_seconds)).isoformat(
                   timespec="seconds"),
               "seconds": round(seconds, 1)}
    if len(paths) > 1:
        payload["combined"] = [str(path) for path in paths]
    if done < len(seeds):
        payload["stopped_early"] = f"after {done} of the {len(seeds)} seeds {seeds}"
    return payload


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {}
    for searcher, results in runs.items():
        s = {key: median(r.get(key) for r in results) for key in (
            "test_accuracy", "best_val_accuracy", "n_trials", "total_seconds")}
        tests = common.finite(r["test_accuracy"] for r in results)
        s["test_min"], s["test_max"] = (min(tests), max(tests)) if tests else (None, None)
        reached = [r["time_to_90"] for r in results]
        s["time_to_90_reached"] = f"{sum(t is not None for t in reached)}/{len(reached)}"
        middle = statistics.median([math.inf if t is None else t for t in reached])
        s["time_to_90"] = None if math.isinf(middle) else middle
        summary[searcher] = s
    return summary


def plot(runs: dict[str, list[dict]], params: dict, path: Path) -> None:
    """Best validation accuracy so far against wall time, one line per searcher and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (searcher, results) in zip(colors, runs.items(), strict=False):
        for index, run in enumerate(results):
            best, xs, ys = None, [0.0], [None]
            for t, v in zip(run["trial_ends"], run["trial_val_accuracy"], strict=True):
                if v is not None and (best is None or v > best):
                    best = v
                xs.append(t)
                ys.append(best)
            ax.step(xs, [float("nan") if y is None else y for y in ys], where="post",
                    color=color, alpha=0.85, label=searcher if index == 0 else None)
    ax.axhline(THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.axvline(params["budget"], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("wall time since the search started (s); dashed: the budget")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"Fashion-MNIST, {params['limit']:,} training images, budget "
                 f"{params['budget']:g} s: one line per searcher and seed")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tables(payload: dict) -> list[Table]:
    summary, p = payload["summary"], payload["params"]
    rows = []
    for searcher, s in summary.items():
        spread = f"{fmt(s['test_min'], 4)}-{fmt(s['test_max'], 4)}"
        time_to = "never" if s["time_to_90"] is None else fmt(s["time_to_90"], 0)
        rows.append([searcher, fmt(s["test_accuracy"], 4), spread, fmt(s["best_val_accuracy"], 4),
                     f"{time_to} ({s['time_to_90_reached']})", fmt(s["n_trials"], 0),
                     fmt(s["total_seconds"], 0)])
    for name, accuracy in payload["anchors"]:
        rows.append([f"anchor: {name}", fmt(accuracy, 3), "published", "", "", "", ""])
    title = (f"fashion: Fashion-MNIST, {p['limit']:,} training images, budget {p['budget']:g} s "
             f"per search, median over seeds {' '.join(map(str, p['seeds']))}")
    return [(title, ["searcher", "test acc", "test min-max", "best val acc",
                     "time to 90% val s (reached)", "trials", "total s"], rows),
            per_seed(payload), *targets(summary)]


def per_seed(payload: dict) -> Table:
    """Each seed's test accuracy and time to 90% validation accuracy, per searcher."""
    runs, seeds = payload["runs"], payload["params"]["seeds"]
    rows = []
    for index, seed in enumerate(seeds):
        row = [str(seed)]
        for results in runs.values():
            run = results[index] if index < len(results) else {}
            reached = run.get("time_to_90")
            row.append(f"{fmt(run.get('test_accuracy'), 4)} / "
                       f"{'never' if reached is None else fmt(reached, 0)}")
        rows.append(row)
    return ("fashion, per seed: test accuracy / seconds to 90% validation accuracy",
            ["seed", *runs], rows)


def targets(summary: dict) -> list[Table]:
    """The issue's targets, checked on the medians (when ours and the baselines ran)."""
    ours, plain, optuna = (summary.get(k) for k in ("ours", "keras_tuner", "optuna"))
    if ours is None or plain is None:
        return []
    rows = [["test accuracy >= plain keras-tuner + 0.5 points",
             fmt(ours["test_accuracy"], 4), f">= {fmt(plain['test_accuracy'] + 0.005, 4)}",
             _met(ours["test_accuracy"] >= plain["test_accuracy"] + 0.005)]]
    if optuna is not None:
        rows.append(["test accuracy >= Optuna TPE + median pruning",
                     fmt(ours["test_accuracy"], 4), f">= {fmt(optuna['test_accuracy'], 4)}",
                     _met(ours["test_accuracy"] >= optuna["test_accuracy"])])
    mine, theirs = (math.inf if s["time_to_90"] is None else s["time_to_90"]
                    for s in (ours, plain))
    rows.append(["90% validation accuracy in <= half plain keras-tuner's time (median s)",
                 "never" if math.isinf(mine) else fmt(mine, 0),
                 "<= " + ("any time (it never got there)" if math.isinf(theirs)
                          else fmt(theirs / 2, 0)),
                 _met(mine <= theirs / 2 and not math.isinf(mine))])
    return [("fashion: the targets (medians over the seeds)",
             ["target", "ours", "needed", "met"], rows)]


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: list[str] | None = None) -> int:
    return common.entry(NAME, argv, build_parser(), WORKERS, measure, tables)


if __name__ == "__main__":
    raise SystemExit(main())
