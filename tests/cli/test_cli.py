"""The ``cnnsearch`` console script in subprocesses, as a user runs it (the bad-input
catalogue is tests/reliability/test_bad_inputs.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml

QUICK = ["experiment=quick", "training.epochs=1", "data.limit=200"]

def _run(command, *args, env, cwd, timeout=600):
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def test_help_lists_the_commands(cnnsearch, cli_env, tmp_path):
    for flag in ("--help", "-h"):
        out = _run(cnnsearch, flag, env=cli_env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage: cnnsearch <command>")
        assert re.search(r"^\s+sweep\s+\S", out.stdout, re.MULTILINE)
    assert list(tmp_path.iterdir()) == []


def test_the_ui_command_loads_neither_keras_nor_tensorflow(cli_env, tmp_path):
    code = ("import sys; import cnnsearch.search.app.commands, cnnsearch.search.app.cli; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'keras_tuner') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=cli_env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_version(cnnsearch, cli_env, tmp_path):
    out = _run(cnnsearch, "--version", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"cnnsearch {version('cnnsearch')}"


def test_sweep_help_shows_the_config_groups(cnnsearch, cli_env, tmp_path):
    out = _run(cnnsearch, "sweep", "--help", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for group in ("data", "search_space", "tuner", "training", "tracking", "experiment"):
        assert f"{group}:" in out.stdout
    assert "hyperband" in out.stdout


def test_cfg_job_prints_the_config_and_runs_nothing(cnnsearch, cli_env, tmp_path):
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", "--cfg", "job", "tuner=grid", "tuner.max_trials=7",
               "search_space=small", f"paths.root={root}", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["tuner"]["name"] == "grid"
    assert cfg["tuner"]["max_trials"] == 7
    assert cfg["search_space"]["filters"] == [8, 16]
    assert cfg["paths"]["root"] == str(root)
    assert cfg["data"]["name"] == "digits"
    assert list(tmp_path.iterdir()) == []   # not even paths.root


@pytest.mark.slow   # ~30 s of CPU: imports, two trials, final fit, MLflow model logging
def test_quick_sweep_end_to_end(cnnsearch, cli_env, tmp_path):
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", *QUICK, "tuner.max_trials=2", f"paths.root={root}",
               env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout
    assert re.search(r"test accuracy\s*│?\s*[01]\.\d{4}", out.stdout), out.stdout
    assert re.search(r"trials run / failed / skipped\s*│?\s*2 / 0 / 0", out.stdout), out.stdout
    (sweep,) = (root / "sweeps").iterdir()
    assert (sweep / "best_model.keras").is_file()
    assert (sweep / "sweep.json").is_file()
    assert "cnnsearch: error" not in out.stderr
    # nothing is written outside paths.root (no Hydra output folder in the working dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_multirun_makes_one_sweep_per_combination(cnnsearch, cli_env, tmp_path):
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", "-m", "tuner=random,grid", "seed=0,1", *QUICK,
               "tuner.max_trials=1", f"paths.root={root}", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweeps = sorted(p.name for p in (root / "sweeps").iterdir())
    assert len(sweeps) == 4, sweeps
    assert {re.sub(r"-[0-9a-f]{8}$", "", name) for name in sweeps} == {
        "digits-random-seed0", "digits-random-seed1", "digits-grid-seed0", "digits-grid-seed1"}
    for name in sweeps:
        assert (root / "sweeps" / name / "best_model.keras").is_file()
    assert out.stdout.count("test accuracy") == 4


@pytest.mark.slow
def test_sum_pooling_with_stride_2_on_8x8_digits(cnnsearch, cli_env, tmp_path):
    # `same` padding never runs out of map: 8 -> conv s2 -> 4 -> sum pool -> 2, and a second
    # block -> 1 -> 1, so every candidate is feasible and the sweep trains.
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", "search_space=small", "search_space.pooling=[sum]",
               "search_space.strides=[2]", "tuner.max_trials=2", "training.epochs=1",
               "data.limit=200", f"paths.root={root}", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"\d+c3s2-sum2", out.stdout), out.stdout
    assert re.search(r"trials run / failed / skipped\s*│?\s*2 / 0 / 0", out.stdout), out.stdout
    (sweep,) = (root / "sweeps").iterdir()
    assert (sweep / "best_model.keras").is_file()
