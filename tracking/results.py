"""MLflow runs -> pandas leaderboard, Pareto front and plots."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from cnnsearch.search.events import Objective  # noqa: E402
from cnnsearch.tracking.store import TAG_ROLE, RunState  # noqa: E402

log = logging.getLogger(__name__)

COLUMNS = ["rank", "trial", "status", "score", "reevaluated", "mean_score", "val_accuracy",
           "params", "flops",
           "train_seconds", "epochs_run", "pareto", "architecture", "reason", "run_id",
           "start_time"]
# column -> where a trial's run (flattened by pandas.json_normalize) holds it; "score"
# is the metric best_<objective> of the sweep
SOURCES = {"trial": "data.tags.cnnsearch.trial_id", "status": "data.tags.cnnsearch.status",
           "score": None, "reevaluated": None, "mean_score": None,
           "val_accuracy": "data.metrics.best_val_accuracy",
           "params": "data.metrics.param_count", "flops": "data.metrics.flops",
           "train_seconds": "data.metrics.train_seconds",
           "epochs_run": "data.metrics.epochs_run",
           "architecture": "data.tags.cnnsearch.architecture",
           "reason": "data.tags.cnnsearch.reason", "run_id": "info.run_id",
           "start_time": "info.start_time"}


def latest_sweep(client: MlflowClient, experiment_ids: list[str], finished: bool = False):
    """The most recently started sweep (parent) run, or None: what ``latest`` means for
    ``cnnsearch results`` and ``cnnsearch export`` alike (``finished``: the most recently
    started of the FINISHED ones)."""
    status = f" and attributes.status = '{RunState.FINISHED}'" if finished else ""
    runs = client.search_runs(experiment_ids,
                              filter_string=f"tags.`{TAG_ROLE}` = 'sweep'{status}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def leaderboard(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """One row per trial of a sweep, best first by the sweep's objective, with the Pareto
    front marked.

    Columns: rank, trial, status, score (the best epoch's ``tuner.objective``; its name
    is in ``table.attrs["objective"]``), reevaluated and mean_score (a top-k
    re-evaluation's score and its mean with score, else empty), val_accuracy (best
    epoch), params, flops,
    train_seconds, epochs_run, pareto (not dominated in accuracy vs params),
    architecture (one line), reason (of a failure), run_id, start_time.
    """
    parent = client.get_run(parent_run_id)
    objective, maximize = sweep_objective(parent)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50_000)
    # each run flattened: info.run_id, data.metrics.<name>, data.tags.<name> ...
    flat = pd.json_normalize([run.to_dictionary() for run in runs])
    sources = {**SOURCES, "score": f"data.metrics.best_{objective}",
               "reevaluated": f"data.metrics.reevaluated_{objective}",
               "mean_score": f"data.metrics.mean_{objective}"}
    table = flat.reindex(columns=list(sources.values()))
    table.columns = list(sources)
    if "info.status" in flat:   # a run without cnnsearch's status: MLflow's
        table["status"] = table.status.fillna(flat["info.status"].str.lower())
    table = table.fillna({"trial": "", "architecture": "", "reason": ""})
    table["start_time"] = pd.to_datetime(table.start_time, unit="ms")
    table = table.sort_values(["score", "params"], ascending=[not maximize, True],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(COLUMNS.index("pareto"), "pareto", pareto_front(table))
    for column in ("params", "flops", "epochs_run"):
        table[column] = table[column].astype("Int64")
    table.attrs["objective"] = objective
    return table


def sweep_objective(parent) -> tuple[str, bool]:
    """The objective a sweep (parent run) ranked its trials by, and whether higher is better."""
    params = parent.data.params
    objective = Objective(params.get("tuner.objective", Objective.val_accuracy))
    direction = params.get("tuner.direction")   # "None" when it was left to the objective
    if direction not in ("max", "min"):
        direction = objective.default_direction
    return objective, direction == "max"


def pareto_front(table: pd.DataFrame) -> pd.Series:
    """True for completed trials that no other trial beats on both accuracy and size."""
    done = table.dropna(subset=["val_accuracy", "params"])
    best_of_size = done.groupby("params").val_accuracy.max()   # sizes in ascending order
    best_smaller = best_of_size.cummax().shift(fill_value=float("-inf"))
    # the best of its size (ties with it too), and better than every smaller trial
    undominated = ((done.val_accuracy == done.params.map(best_of_size))
                   & (done.val_accuracy > done.params.map(best_smaller)))
    return undominated.reindex(table.index, fill_value=False)


def log_plots(client: MlflowClient, run_id: str, table: pd.DataFrame, name: str,
              top: int = 5) -> None:
    """Log three PNGs on the sweep run ``name``: accuracy vs params (Pareto front),
    accuracy per trial in time order with best-so-far, and the learning curves of the
    top trials. Points carry their trial id and the winner (rank 1) is starred."""
    done = table.dropna(subset=["val_accuracy"])
    if done.empty:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for filename, figure in (
                ("val_accuracy_vs_params.png", _accuracy_vs_params(done, name)),
                ("val_accuracy_per_trial.png", _accuracy_over_time(done, name)),
                ("learning_curves_top.png", _learning_curves(client, done.head(top), name))):
            figure.savefig(Path(tmp) / filename, dpi=120, bbox_inches="tight")
            plt.close(figure)
            client.log_artifact(run_id, str(Path(tmp) / filename), "plots")


FIGSIZE = (10, 6)
LABELLED_TRIALS = 40   # more points than this get no trial-id labels


def _label_trials(axes, xs, ys, trials) -> None:
    if len(trials) <= LABELLED_TRIALS:
        for x, y, trial in zip(xs, ys, trials, strict=True):
            axes.annotate(str(trial), (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=8, alpha=0.8)


def _mark_winner(axes, x, y) -> None:
    axes.plot([x], [y], marker="*", markersize=18, color="gold", markeredgecolor="black",
              linestyle="none", label="winner", zorder=5)


def _zoom(axes, values) -> None:
    """Y range from just under the lowest plotted score to just over the highest."""
    values = pd.Series(values).dropna()
    low, high = values.min(), values.max()
    margin = max((high - low) * 0.08, 0.002)
    axes.set_ylim(low - margin, high + margin)


def _accuracy_vs_params(done: pd.DataFrame, name: str):
    figure, axes = plt.subplots(figsize=FIGSIZE)
    axes.scatter(done.params, done.val_accuracy, alpha=0.6, label="trials")
    _label_trials(axes, done.params, done.val_accuracy, done.trial)
    front = done[done.pareto].sort_values("params")
    axes.step(front.params, front.val_accuracy, where="post", color="C3", label="Pareto front")
    _mark_winner(axes, done.params.iloc[0], done.val_accuracy.iloc[0])
    axes.set_xscale("log")
    _zoom(axes, done.val_accuracy)
    axes.set(xlabel="parameters (log scale)", ylabel="best val accuracy",
             title=f"{name}: accuracy vs size")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _accuracy_over_time(done: pd.DataFrame, name: str):
    ordered = done.sort_values("start_time")
    figure, axes = plt.subplots(figsize=FIGSIZE)
    steps = list(range(1, len(ordered) + 1))
    axes.plot(steps, ordered.val_accuracy, "o", alpha=0.6, label="trial")
    _label_trials(axes, steps, ordered.val_accuracy, ordered.trial)
    axes.plot(steps, ordered.val_accuracy.cummax(), color="C3", drawstyle="steps-post",
              label="best so far")
    winner = steps[list(ordered.trial).index(done.trial.iloc[0])]
    _mark_winner(axes, winner, done.val_accuracy.iloc[0])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    _zoom(axes, ordered.val_accuracy)
    axes.set(xlabel="trial (in the order they started)", ylabel="best val accuracy",
             title=f"{name}: search progress")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _learning_curves(client: MlflowClient, top: pd.DataFrame, name: str):
    figure, axes = plt.subplots(figsize=FIGSIZE)
    plotted = []
    for rank, (_, row) in enumerate(top.iterrows(), start=1):
        history = sorted(client.get_metric_history(row.run_id, "val_accuracy"),
                         key=lambda m: m.step)
        steps, values = [m.step for m in history], [m.value for m in history]
        axes.plot(steps, values, marker=".", linewidth=2.5 if rank == 1 else 1.2,
                  label=f"#{rank} trial {row.trial}" + (" (winner)" if rank == 1 else ""))
        plotted += values[len(values) // 4:]   # zoom on where the curves settle
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if plotted:
        _zoom(axes, plotted)
    axes.set(xlabel="epoch (MLflow step, from 0)", ylabel="val accuracy",
             title=f"{name}: learning curves of the top {len(top)} trials")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
