"""MLflow runs -> pandas leaderboard, Pareto front and plots."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from cnnsearch.tracking.store import TAG_ROLE  # noqa: E402

log = logging.getLogger(__name__)

COLUMNS = ["rank", "trial", "status", "val_accuracy", "params", "flops", "train_seconds",
           "epochs_run", "pareto", "architecture", "reason", "run_id", "start_time"]


def latest_sweep(client: MlflowClient, experiment_ids: list[str]):
    """The most recently started sweep (parent) run, or None."""
    runs = client.search_runs(experiment_ids, filter_string=f"tags.`{TAG_ROLE}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def leaderboard(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """One row per trial of a sweep, best first, with the Pareto front marked.

    Columns: rank, trial, status, val_accuracy (best epoch), params, flops,
    train_seconds, epochs_run, pareto (not dominated in accuracy vs params),
    architecture (one line), reason (of a failure), run_id, start_time.
    """
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=50_000)
    rows = []
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        rows.append({
            "trial": tags.get("cnnsearch.trial_id", ""),
            "status": tags.get("cnnsearch.status", run.info.status.lower()),
            "val_accuracy": metrics.get("best_val_accuracy"),
            "params": metrics.get("params"),
            "flops": metrics.get("flops"),
            "train_seconds": metrics.get("train_seconds"),
            "epochs_run": metrics.get("epochs_run"),
            "architecture": tags.get("cnnsearch.architecture", ""),
            "reason": tags.get("cnnsearch.reason", ""),
            "run_id": run.info.run_id,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms"),
        })
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("rank", "pareto")])
    table = table.sort_values(["val_accuracy", "params"], ascending=[False, True],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table.insert(COLUMNS.index("pareto"), "pareto", pareto_front(table))
    for column in ("params", "flops", "epochs_run"):
        table[column] = table[column].astype("Int64")
    return table


def pareto_front(table: pd.DataFrame) -> pd.Series:
    """True for completed trials that no other trial beats on both accuracy and size."""
    done = table.dropna(subset=["val_accuracy", "params"])
    front = pd.Series(False, index=table.index)
    for index, row in done.iterrows():
        better = done[(done.val_accuracy >= row.val_accuracy) & (done.params <= row.params)
                      & ((done.val_accuracy > row.val_accuracy) | (done.params < row.params))]
        front[index] = better.empty
    return front


def log_plots(client: MlflowClient, run_id: str, table: pd.DataFrame, top: int = 5) -> None:
    """Log three PNGs on the sweep run: accuracy vs params (Pareto front), accuracy per
    trial in time order with best-so-far, and the learning curves of the top trials."""
    done = table.dropna(subset=["val_accuracy"])
    if done.empty:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in (("val_accuracy_vs_params.png", _accuracy_vs_params),
                           ("val_accuracy_per_trial.png", _accuracy_over_time)):
            figure = draw(done)
            figure.savefig(Path(tmp) / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            client.log_artifact(run_id, str(Path(tmp) / name), "plots")
        figure = _learning_curves(client, done.head(top))
        figure.savefig(Path(tmp) / "learning_curves_top.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        client.log_artifact(run_id, str(Path(tmp) / "learning_curves_top.png"), "plots")


def _accuracy_vs_params(done: pd.DataFrame):
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(done.params, done.val_accuracy, alpha=0.6, label="trials")
    front = done[done.pareto].sort_values("params")
    axes.step(front.params, front.val_accuracy, where="post", color="C3", label="Pareto front")
    axes.set_xscale("log")
    axes.set(xlabel="parameters", ylabel="best val accuracy", title="accuracy vs size")
    axes.legend()
    return figure


def _accuracy_over_time(done: pd.DataFrame):
    ordered = done.sort_values("start_time")
    figure, axes = plt.subplots(figsize=(6, 4))
    steps = range(1, len(ordered) + 1)
    axes.plot(steps, ordered.val_accuracy, "o", alpha=0.6, label="trial")
    axes.plot(steps, ordered.val_accuracy.cummax(), color="C3", label="best so far")
    axes.set(xlabel="trial (time order)", ylabel="best val accuracy", title="search progress")
    axes.legend()
    return figure


def _learning_curves(client: MlflowClient, top: pd.DataFrame):
    figure, axes = plt.subplots(figsize=(6, 4))
    for _, row in top.iterrows():
        history = client.get_metric_history(row.run_id, "val_accuracy")
        history = sorted(history, key=lambda m: m.step)
        axes.plot([m.step + 1 for m in history], [m.value for m in history],
                  marker=".", label=f"trial {row.trial}")
    axes.set(xlabel="epoch", ylabel="val accuracy", title=f"top {len(top)} trials")
    axes.legend()
    return figure
