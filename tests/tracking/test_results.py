"""tracking.results (leaderboard, Pareto front, latest sweep) and ``cnnsearch results``."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.entities import Metric

from cnnsearch.tracking.results import COLUMNS, latest_sweep, leaderboard, pareto_front
from cnnsearch.tracking.store import TrackingError
from cnnsearch.tracking.winner import find_winner
from tests.conftest import error_lines
from tests.tracking.conftest import new_experiment, run_cli

CSV_COLUMNS = {"rank", "trial", "status", "score", "val_accuracy", "params", "flops", "pareto",
               "architecture"}


# -- pareto_front on hand-made tables ----------------------------------------------------


def test_pareto_front_marks_the_undominated_trials():
    table = pd.DataFrame(
        {"val_accuracy": [0.9, 0.9, 0.8, 0.8, 0.7, None, 0.95, 0.99],
         "params": [1000, 2000, 500, 500, 3000, 100, None, 10_000]},
        index=[10, 11, 12, 13, 14, 15, 16, 17])
    front = pareto_front(table)
    assert list(front.index) == list(table.index)
    assert front.to_dict() == {
        10: True,    # beaten only by bigger models
        11: False,   # same accuracy as 10 with more parameters
        12: True,    # the smallest, and an exact tie with 13: neither dominates the other
        13: True,
        14: False,   # worse and bigger than 10
        15: False,   # no accuracy (a failed trial) is never on the front
        16: False,   # no size known
        17: True,    # the most accurate
    }


def test_pareto_front_of_one_and_of_no_trial():
    assert pareto_front(pd.DataFrame({"val_accuracy": [0.5], "params": [10]})).tolist() == [True]
    empty = pd.DataFrame({"val_accuracy": pd.Series(dtype=float),
                          "params": pd.Series(dtype=float)})
    assert pareto_front(empty).empty


# -- leaderboard and latest_sweep on runs made by hand -----------------------------------


def _sweep(client, experiment_id: str, name: str, start_time: int,
           objective: str = "val_accuracy") -> str:
    run = client.create_run(experiment_id, start_time=start_time, run_name=name,
                            tags={"cnnsearch.role": "sweep"})
    client.log_param(run.info.run_id, "tuner.objective", objective)
    client.log_param(run.info.run_id, "tuner.direction", "None")   # as the recorder logs it
    return run.info.run_id


def _trial(client, experiment_id: str, parent_id: str, trial_id: str,
           val_accuracy: float | None, params: int, reason: str | None = None,
           val_loss: float | None = None) -> str:
    status = "completed" if reason is None else "failed"
    tags = {"mlflow.parentRunId": parent_id, "cnnsearch.role": "trial",
            "cnnsearch.trial_id": trial_id, "cnnsearch.status": status,
            "cnnsearch.architecture": f"arch {trial_id}"}
    if reason:
        tags["cnnsearch.reason"] = reason
    run_id = client.create_run(experiment_id, run_name=f"trial-{trial_id}", tags=tags).info.run_id
    values = {"param_count": params, "flops": 10 * params, "epochs_run": 2,
              "train_seconds": 1.5, "best_val_accuracy": val_accuracy, "best_val_loss": val_loss}
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()
                                      if v is not None])
    client.set_terminated(run_id, "FINISHED" if reason is None else "FAILED")
    return run_id


@pytest.fixture(scope="module")
def made(scratch_client):
    """Two sweeps by hand; the second (later) one has six trials, one of them failed."""
    client = scratch_client
    experiment_id = new_experiment(client)
    first = _sweep(client, experiment_id, "first", start_time=1_000)
    _trial(client, experiment_id, first, "x", 0.99, 10)
    second = _sweep(client, experiment_id, "second", start_time=2_000)
    for trial_id, accuracy, params in (("e", 0.7, 3000), ("c", 0.8, 500), ("b", 0.9, 2000),
                                       ("d", 0.8, 500), ("a", 0.9, 1000)):
        _trial(client, experiment_id, second, trial_id, accuracy, params)
    _trial(client, experiment_id, second, "f", None, 100, reason="loss became NaN at epoch 0")
    return client, experiment_id, first, second


def test_latest_sweep_is_the_last_started_and_export_refuses_it_unfinished(scratch_client):
    client = scratch_client
    experiment_id = new_experiment(client)
    assert latest_sweep(client, [experiment_id]) is None
    older = _sweep(client, experiment_id, "older", start_time=1_000)
    client.set_terminated(older, "FINISHED", end_time=4_000)
    newer = _sweep(client, experiment_id, "newer", start_time=2_000)
    client.set_terminated(newer, "KILLED", end_time=3_000)
    assert latest_sweep(client, [experiment_id]).info.run_id == newer
    assert latest_sweep(client, [experiment_id], finished=True).info.run_id == older
    with pytest.raises(TrackingError, match=f"newer is KILLED .*export.run={older}"):
        find_winner(client, experiment_id)   # the same sweep, or a clear no


def test_leaderboard_is_best_first_with_ties_to_the_smaller(made):
    client, _, first, second = made
    table = leaderboard(client, second)
    assert list(table.columns) == COLUMNS
    assert list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    trials = list(table.trial)
    assert trials[:2] == ["a", "b"]          # 0.9 with 1000 before 0.9 with 2000
    assert set(trials[2:4]) == {"c", "d"}    # exact tie
    assert trials[4:] == ["e", "f"]          # the failed trial (no accuracy) last
    assert table.pareto.tolist() == [True, False, True, True, False, False]
    failed = table.iloc[5]
    assert failed.status == "failed" and math.isnan(failed.val_accuracy)
    assert failed.reason == "loss became NaN at epoch 0"
    assert table.params.dtype == "Int64" and table.params.iloc[0] == 1000
    assert table.architecture.iloc[0] == "arch a"
    assert "x" not in trials                 # another sweep's trial
    assert leaderboard(client, first).trial.tolist() == ["x"]
    assert table.attrs["objective"] == "val_accuracy"
    assert table.score.tolist()[:5] == table.val_accuracy.tolist()[:5]


def test_leaderboard_ranks_by_the_sweeps_objective_and_direction(scratch_client):
    client = scratch_client
    experiment_id = new_experiment(client)
    sweep = _sweep(client, experiment_id, "by-loss", start_time=1_000, objective="val_loss")
    # the lowest loss is not the highest accuracy
    for trial_id, accuracy, loss in (("a", 0.95, 0.30), ("b", 0.90, 0.10), ("c", 0.93, 0.20)):
        _trial(client, experiment_id, sweep, trial_id, accuracy, 100, val_loss=loss)
    table = leaderboard(client, sweep)
    assert table.trial.tolist() == ["b", "c", "a"]
    assert table.score.tolist() == [0.10, 0.20, 0.30]
    assert table.attrs["objective"] == "val_loss"


# -- cnnsearch results (in this process) on the real sweep --------------------------------


def _data_rows(out: str) -> list[str]:
    """Rows of a rich table whose first cell (rank) is a number."""
    return [line for line in out.splitlines()
            if line.startswith("│") and line.strip("│ ").split("│")[0].strip().isdigit()]


def test_results_prints_and_writes_the_leaderboard(swept, cli_in_process, tmp_path):
    path = tmp_path / "lb.csv"
    code, out, err = cli_in_process("results", f"paths.root={swept.root}", f"results.csv={path}")
    assert code == 0, err
    assert "val accuracy" in out and swept.parent.info.run_name in out
    assert len(_data_rows(out)) == 3
    table = pd.read_csv(path)
    assert len(table) == 3
    assert CSV_COLUMNS <= set(table.columns)
    assert list(table["rank"]) == [1, 2, 3]
    assert list(table.val_accuracy) == sorted(table.val_accuracy, reverse=True)
    assert table.pareto.dtype == bool and table.pareto.iloc[0]
    assert set(table.status) == {"completed"}
    assert set(table.run_id) == {run.info.run_id for run in swept.store.children}


def test_results_top_limits_the_printed_rows(swept, cli_in_process, tmp_path):
    code, out, err = cli_in_process("results", f"paths.root={swept.root}", "results.top=1",
                                    f"results.sweep={swept.parent.info.run_id}")
    assert code == 0, err
    (row,) = _data_rows(out)
    assert row.strip("│ ").split("│")[0].strip() == "1"


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("cnnsearch: error: ")
    return lines[0]


def test_results_without_any_sweep_is_one_line_and_creates_nothing(cli_in_process, tmp_path):
    root = tmp_path / "empty"
    code, out, err = cli_in_process("results", f"paths.root={root}")
    assert _one_error_line(code, err).startswith("cnnsearch: error: no sweep yet")
    assert out == ""
    assert not root.exists()


def test_results_of_an_unknown_sweep_id(swept, cli_in_process):
    run_id = "0123456789abcdef0123456789abcdef"
    code, _, err = cli_in_process("results", f"paths.root={swept.root}", f"results.sweep={run_id}")
    assert run_id in _one_error_line(code, err)


def test_results_needs_tracking(swept, cli_in_process):
    code, _, err = cli_in_process("results", f"paths.root={swept.root}", "tracking=none")
    assert "tracking=none" in _one_error_line(code, err)


# -- the console script itself -----------------------------------------------------------


@pytest.mark.slow
def test_results_console_script(swept, tmp_path):
    path = tmp_path / "lb.csv"
    done = run_cli("results", f"paths.root={swept.root}", f"results.csv={path}")
    assert done.returncode == 0, done.stderr
    assert "val accuracy" in done.stdout
    assert len(pd.read_csv(path)) == 3

    root = tmp_path / "empty"
    done = run_cli("results", f"paths.root={root}")
    assert _one_error_line(done.returncode, done.stderr).startswith(
        "cnnsearch: error: no sweep yet")
    assert not root.exists()


def test_a_re_evaluated_sweep_shows_both_scores_in_mlflow_and_the_leaderboard(
        cli_in_process, tmp_path):
    from tests.tracking.conftest import QUICK, open_experiment

    code, out, err = cli_in_process("sweep", f"paths.root={tmp_path}", *QUICK,
                                    "reevaluate.top_k=2")
    assert code == 0, err[-3000:]
    store = open_experiment(tmp_path)
    table = leaderboard(store.client, store.parents[0].info.run_id)
    again = table[table.reevaluated.notna()]
    assert len(again) == 2 and set(again["rank"]) == {1, 2}   # the two best by the search
    for _, row in again.iterrows():
        assert row.mean_score == pytest.approx((row.score + row.reevaluated) / 2)
    winner = again.loc[again.mean_score.idxmax()]
    assert store.parents[0].data.tags["cnnsearch.best_trial"] == winner.trial
    assert table.mean_score.isna().sum() == len(table) - 2
    code, out, _ = cli_in_process("results", f"paths.root={tmp_path}")
    assert code == 0 and "reevaluated" in out and "mean score" in out
