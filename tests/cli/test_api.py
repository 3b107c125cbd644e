"""The Python API (``cnnsearch.sweep``, ``results``, ``export``, ``compose``): the CLI's
overrides, results returned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cnnsearch
from cnnsearch.search.errors import UserError
from tests.tracking.conftest import open_experiment, run_cli

SWEEP = ["experiment=quick", "tuner.max_trials=3", "training.epochs=2", "data.limit=300",
         "seed=3", "sweep.name=same"]


def _trials(root: Path) -> dict[str, dict]:
    """Trial id -> the hyperparameter values keras-tuner drew for it."""
    return {path.parent.name: json.loads(path.read_text())["hyperparameters"]["values"]
            for path in (root / "sweeps" / "same" / "tuner").glob("trial_*/trial.json")}


def test_compose_takes_the_clis_overrides():
    cfg = cnnsearch.compose(["tuner=hyperband", "search_space=small",
                             "search_space.filters={min: 4, max: 12, step: 4}"])
    assert cfg.tuner.name == "hyperband"
    assert dict(cfg.search_space.filters) == {"min": 4, "max": 12, "step": 4}


def test_a_bad_override_raises_the_clis_one_line():
    with pytest.raises(UserError, match=r"^config error: .*tuner") as info:
        cnnsearch.compose(["tuner=foo"])
    assert "\n" not in str(info.value)


def test_import_cnnsearch_loads_no_framework():
    code = ("import sys, cnnsearch; print(sorted(m for m in ('keras', 'tensorflow', "
            "'mlflow', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_api_and_the_cli_run_the_same_trials_and_the_api_returns_the_results(tmp_path):
    api_root, cli_root = tmp_path / "api", tmp_path / "cli"
    result = cnnsearch.sweep([*SWEEP, f"paths.root={api_root}"])
    done = run_cli("sweep", *SWEEP, f"paths.root={cli_root}")
    assert done.returncode == 0, done.stderr[-3000:]

    assert _trials(api_root) == _trials(cli_root) and len(_trials(api_root)) == 3
    board = result.leaderboard
    assert sorted(board.trial) == sorted(t.removeprefix("trial_") for t in _trials(api_root))
    assert board.loc[board.trial == result.best_trial_id, "score"].item() == board.score.max()
    assert Path(result.model_path).is_file() and result.test_accuracy is not None
    (parent,) = open_experiment(api_root).parents
    assert (parent.info.run_id, parent.info.status) == (result.run_id, "FINISHED")

    again = cnnsearch.results([f"paths.root={api_root}"])   # the latest sweep
    assert list(again.run_id) == list(board.run_id)
    exported = tmp_path / "exported"
    manifest = cnnsearch.export([f"paths.root={api_root}", "export.format=keras",
                                 f"export.dir={exported}"])
    assert (exported / manifest["files"]["keras"]["path"]).is_file()   # relative to it
