"""The ``cnnsearch`` console script in subprocesses: the installed script itself, and (for the
many one-line error cases) its entry point ``search.cli.main`` driven in one fresh process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import pytest
import yaml

from tests.conftest import error_lines

QUICK = ["experiment=quick", "training.epochs=1", "data.limit=200"]

# label -> the command-line arguments of one bad input
BAD_INPUTS = {
    "training.epochz=3": ["sweep", "training.epochz=3"],
    "training.epochs=abc": ["sweep", "training.epochs=abc"],
    "tuner=foo": ["sweep", "tuner=foo"],
    "search_space.pooling": ["sweep", "search_space.pooling=[median]"],
    "search_space.filters": ["sweep", "search_space.filters=[0]"],
    "search_space.kernel_size": ["sweep", "search_space.kernel_size=[0]"],
    "search_space.strides": ["sweep", "search_space.strides=[0]"],
    "search_space.padding": ["sweep", "search_space.padding=[full]"],
    "data.path=": ["sweep", "data=npz"],
    "data.path ": ["sweep", "data=npz", "data.path=/does/not/exist.npz"],
    "tuner.max_trials": ["sweep", "tuner.max_trials=0"],
    "training.epochs": ["sweep", "training.epochs=0"],
    "tuner.objective": ["sweep", "tuner.objective=val_f1"],
    "unknown command": ["frobnicate"],
    "sweep.name absolute": ["sweep", "sweep.name=/etc/passwd"],
    "sweep.name traversal": ["sweep", "sweep.name=../../x", "sweep.resume=false"],
    "tuner.factor": ["sweep", "tuner=hyperband", "tuner.factor=1"],
    "ui.port high": ["ui", "ui.port=70000"],
    "ui.port negative": ["ui", "ui.port=-1"],
    "results.top": ["results", "results.top=-3"],
    "tracking.mode": ["sweep", "tracking.mode=cloud"],
    "data.path idx": ["sweep", "data=fashion_mnist", "data.path=/does/not/exist"],
}
NAMED = {  # label -> what its one-line error must name: the key, the bad value, choices
    "training.epochz=3": ["epochz", "allowed keys", "epochs"],
    "training.epochs=abc": ["training.epochs", "abc"],
    "tuner=foo": ["tuner", "foo", "random"],
    "search_space.pooling": ["search_space.pooling", "median", "max, avg, sum"],
    "search_space.filters": ["search_space.filters", "0"],
    "search_space.kernel_size": ["search_space.kernel_size", "0"],
    "search_space.strides": ["search_space.strides", "0"],
    "search_space.padding": ["search_space.padding", "full", "same, valid"],
    "data.path=": ["data.path", "npz"],
    "data.path ": ["data.path", "/does/not/exist.npz"],
    "tuner.max_trials": ["tuner.max_trials", ">= 1"],
    "training.epochs": ["training.epochs", ">= 1"],
    "tuner.objective": ["tuner.objective", "val_f1", "val_accuracy"],
    "unknown command": ["frobnicate", "sweep"],
    "sweep.name absolute": ["sweep.name", "plain folder name"],
    "sweep.name traversal": ["sweep.name", "../../x", "plain folder name"],
    "tuner.factor": ["tuner.factor", ">= 2", "got 1"],
    "ui.port high": ["ui.port", "65535", "70000"],
    "ui.port negative": ["ui.port", "-1"],
    "results.top": ["results.top", ">= 1", "-3"],
    "tracking.mode": ["tracking.mode", "cloud", "local, server, none"],
    "data.path idx": ["data.path", "/does/not/exist", "not a folder"],
}


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


def _check_one_line_error(code, stdout, stderr, root, label) -> None:
    assert code == 2, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith("cnnsearch: error: "), line
    for word in NAMED[label]:
        assert word in line, (word, line)
    assert stdout == ""
    assert not root.exists() or list(root.rglob("*")) == [], list(root.rglob("*"))


# Calls search.cli.main (what the console script runs) once per case in ONE fresh process,
# fds 1 and 2 redirected to a file pair per case: every case in a clean process would pay
# TensorFlow's import each time, and in pytest's own process Hydra reconfigures logging.
DRIVER = """
import json, os, sys
from hydra.core.global_hydra import GlobalHydra
from cnnsearch.search.cli import main

cases, folder = json.loads(sys.argv[1]), sys.argv[2]
codes, saved = [], (os.dup(1), os.dup(2))
for i, args in enumerate(cases):
    files = [open(os.path.join(folder, f"{i}.{fd}"), "w") for fd in (1, 2)]
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(files[0].fileno(), 1), os.dup2(files[1].fileno(), 2)
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for f in files:
            f.close()
        GlobalHydra.instance().clear()
    codes.append(code)
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, cli_env):
    """label -> (exit code, stdout, stderr, paths.root) of main() for every bad input."""
    base = tmp_path_factory.mktemp("bad")
    roots = {label: base / f"root{i}" for i, label in enumerate(BAD_INPUTS)}
    cases = [[*args, f"paths.root={roots[label]}"] for label, args in BAD_INPUTS.items()]
    (base / "streams").mkdir()
    driver = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases),
                             str(base / "streams")], capture_output=True, text=True,
                            env=cli_env, cwd=base, timeout=300)
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    return {label: (codes[i], (base / "streams" / f"{i}.1").read_text(),
                    (base / "streams" / f"{i}.2").read_text(), roots[label])
            for i, label in enumerate(BAD_INPUTS)}


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(bad_input_runs, label):
    _check_one_line_error(*bad_input_runs[label], label)


@pytest.mark.parametrize("label", ["unknown command"])
def test_bad_input_through_the_console_script(cnnsearch, cli_env, tmp_path, label):
    root = tmp_path / "out"
    out = _run(cnnsearch, *BAD_INPUTS[label], f"paths.root={root}", env=cli_env, cwd=tmp_path)
    _check_one_line_error(out.returncode, out.stdout, out.stderr, root, label)
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_named_after_a_users_folder_deletes_nothing(cnnsearch, cli_env, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", f"sweep.name={victim}", "sweep.resume=false", *QUICK,
               f"paths.root={root}", env=cli_env, cwd=tmp_path)
    _check_one_line_error(out.returncode, out.stdout, out.stderr, root, "sweep.name absolute")
    assert (victim / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_every_bad_input_through_the_console_script(cnnsearch, cli_env, tmp_path):
    def run(label):
        root = tmp_path / f"root{list(BAD_INPUTS).index(label)}"
        out = _run(cnnsearch, *BAD_INPUTS[label], f"paths.root={root}", env=cli_env,
                   cwd=tmp_path, timeout=300)
        return label, out, root

    with ThreadPoolExecutor(max_workers=3) as pool:   # mostly TensorFlow's import
        for label, out, root in pool.map(run, BAD_INPUTS):
            _check_one_line_error(out.returncode, out.stdout, out.stderr, root, label)
    assert list(tmp_path.iterdir()) == []


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
