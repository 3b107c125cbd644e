"""Bad input through the real CLI (issue 14's catalogue): every user-facing key of every
subcommand and every data file format gets bad values. Each case must end in one short
line naming the problem, exit status 2, no traceback and nothing written under paths.root.

The cases run through ``search.app.cli.main`` (what the console script calls) in one fresh
process; a slow test runs each through the installed console script itself.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import error_lines

pytestmark = pytest.mark.reliability

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
    # -- more keys of every group (issue 14's catalogue) --
    "seed": ["sweep", "seed=abc"],
    "training.batch_size zero": ["sweep", "training.batch_size=0"],
    "training.batch_size negative": ["sweep", "training.batch_size=-5"],
    "training.early_stopping_patience": ["sweep", "training.early_stopping_patience=0"],
    "training.reduce_lr_patience": ["sweep", "training.reduce_lr_patience=0"],
    "training.reduce_lr_factor": ["sweep", "training.reduce_lr_factor=1.5"],
    "training.jit_compile": ["sweep", "training.jit_compile=maybe"],
    "training.mixed_precision": ["sweep", "training.mixed_precision=perhaps"],
    "tuner.max_seconds": ["sweep", "tuner.max_seconds=-1"],
    "tuner.executions_per_trial": ["sweep", "tuner.executions_per_trial=0"],
    "tuner.max_consecutive_failed_trials": ["sweep", "tuner.max_consecutive_failed_trials=0"],
    "tuner.max_retries_per_trial": ["sweep", "tuner.max_retries_per_trial=-1"],
    "tuner.pruning": ["sweep", "tuner.pruning=sometimes"],
    "tuner.pruning_warmup_epochs": ["sweep", "tuner.pruning_warmup_epochs=0"],
    "tuner.direction": ["sweep", "tuner.direction=up"],
    "tuner.max_epochs": ["sweep", "tuner=hyperband", "tuner.max_epochs=0"],
    "tuner.num_initial_points": ["sweep", "tuner=bayesian", "tuner.num_initial_points=abc"],
    "tuner.start_from_defaults": ["sweep", "tuner.start_from_defaults=often"],
    "data.val_fraction": ["sweep", "data.val_fraction=1.5"],
    "data.test_fraction": ["sweep", "data.test_fraction=0"],
    "data.limit": ["sweep", "data.limit=0"],
    "data.image_size": ["sweep", "data=image_folder", "data.path=.", "data.image_size=[0,5]"],
    "data=cifar9": ["sweep", "data=cifar9"],
    "data.color_mode": ["sweep", "data.color_mode=sepia"],
    "final_fit.epochs": ["sweep", "final_fit.epochs=0"],
    "final_fit.schedule": ["sweep", "final_fit.schedule=linear"],
    "search_space.num_blocks empty": ["sweep", "search_space.num_blocks=[]"],
    "search_space.dropout": ["sweep", "search_space.dropout=[1.5]"],
    "search_space.learning_rate zero": ["sweep", "search_space.learning_rate=[0]"],
    "search_space.learning_rate min>max": ["sweep",
                                           "search_space.learning_rate={min:0.1,max:0.01}"],
    "search_space.activation": ["sweep", "search_space.activation=[swoosh]"],
    "search_space.optimizer": ["sweep", "search_space.optimizer=[adagrad9]"],
    "search_space.global_pooling": ["sweep", "search_space.global_pooling=[median]"],
    "search_space.batch_norm": ["sweep", "search_space.batch_norm=[maybe]"],
    "search_space.dense_units": ["sweep", "search_space.dense_units=[-1]"],
    "search_space.max_params": ["sweep", "search_space.max_params=0"],
    "search_space unknown key": ["sweep", "search_space.colour=[1]"],
    "search_space.augmentation.flip": ["sweep", "search_space.augmentation.flip=[vertical]"],
    "search_space.augmentation.translate": ["sweep",
                                            "search_space.augmentation.translate=[1.5]"],
    "search_space.augmentation unknown key": ["sweep", "search_space.augmentation.spin=[1]"],
    "budget.seconds=0": ["sweep", "budget.seconds=0"],
    "reevaluate.top_k=0": ["sweep", "reevaluate.top_k=0"],
    "sweep.name with a space": ["sweep", "sweep.name='a b'"],
    "sweep.name hidden": ["sweep", "sweep.name=.hidden"],
    "experiment=nope": ["sweep", "experiment=nope"],
    "export.format": ["export", "export.format=gif"],
    "ui.port text": ["ui", "ui.port=abc"],
    "results.top zero": ["results", "results.top=0"],
    "results.top text": ["results", "results.top=many"],
    "distributed.workers=0": ["sweep", "distributed.workers=0"],
    "distributed.workers_per_gpu": ["sweep", "distributed.workers_per_gpu=0"],
    "distributed.role": ["sweep", "distributed.role=boss"],
    "distributed.role=worker, no chief": ["sweep", "distributed.role=worker"],
    "distributed.chief": ["sweep", "distributed.role=worker", "distributed.chief=myhost"],
    "distributed.bind": ["sweep", "distributed.role=chief", "distributed.bind=host:99999"],
    "distributed.trial_timeout": ["sweep", "distributed.trial_timeout=0"],
    "server.port": ["server", "server.port=70000"],
    "server.postgres_bin": ["server", "server.postgres_bin=/nowhere"],
    # -- bad data files (written by the bad_input_runs fixture under DATA/) --
    "npz NaN in x": ["sweep", "data=npz", "data.path=DATA/nan.npz"],
    "npz Inf in x": ["sweep", "data=npz", "data.path=DATA/inf.npz"],
    "npz float labels": ["sweep", "data=npz", "data.path=DATA/float_labels.npz"],
    "npz NaN labels": ["sweep", "data=npz", "data.path=DATA/nan_labels.npz"],
    "npz text images": ["sweep", "data=npz", "data.path=DATA/text.npz"],
    "npz flat (N, D)": ["sweep", "data=npz", "data.path=DATA/flat.npz"],
    "npz one class": ["sweep", "data=npz", "data.path=DATA/one_class.npz"],
    "npz unseen test label": ["sweep", "data=npz", "data.path=DATA/unseen.npz"],
    "npz not a zip": ["sweep", "data=npz", "data.path=DATA/notes.txt"],
    "npz empty split": ["sweep", "data=npz", "data.path=DATA/empty.npz"],
    "image_folder unreadable": ["sweep", "data=image_folder", "data.path=DATA/images"],
    "idx truncated": ["sweep", "data=fashion_mnist", "data.path=DATA/idx"],
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
    "search_space.augmentation.flip": ["search_space.augmentation.flip", "vertical",
                                       "none, horizontal"],
    "search_space.augmentation.translate": ["search_space.augmentation.translate", "1.5",
                                            "[0, 1)"],
    "search_space.augmentation unknown key": ["spin", "flip, translate, zoom, contrast"],
    "budget.seconds=0": ["budget.seconds", "> 0"],
    "reevaluate.top_k=0": ["reevaluate.top_k", ">= 1", "0"],
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
    "seed": ["seed", "abc"],
    "distributed.workers=0": ["distributed.workers", ">= 1", "got 0"],
    "distributed.workers_per_gpu": ["distributed.workers_per_gpu", ">= 1"],
    "distributed.role": ["distributed.role", "boss", "chief, worker"],
    "distributed.role=worker, no chief": ["distributed.role=worker", "distributed.chief"],
    "distributed.chief": ["distributed.chief", "HOST:PORT", "myhost"],
    "distributed.bind": ["distributed.bind", "HOST:PORT", "99999"],
    "distributed.trial_timeout": ["distributed.trial_timeout", "> 0"],
    "server.port": ["server.port", "65535", "70000"],
    "server.postgres_bin": ["PostgreSQL is not installed", "/nowhere"],
    "training.batch_size zero": ["training.batch_size", ">= 1"],
    "training.batch_size negative": ["training.batch_size", "-5"],
    "training.early_stopping_patience": ["training.early_stopping_patience", ">= 1"],
    "training.reduce_lr_patience": ["training.reduce_lr_patience", ">= 1"],
    "training.reduce_lr_factor": ["training.reduce_lr_factor", "1.5"],
    "training.jit_compile": ["training.jit_compile", "maybe"],
    "training.mixed_precision": ["training.mixed_precision", "perhaps"],
    "tuner.max_seconds": ["tuner.max_seconds", "-1"],
    "tuner.executions_per_trial": ["tuner.executions_per_trial", ">= 1"],
    "tuner.max_consecutive_failed_trials": ["tuner.max_consecutive_failed_trials", ">= 1"],
    "tuner.max_retries_per_trial": ["tuner.max_retries_per_trial", ">= 0"],
    "tuner.pruning": ["tuner.pruning", "sometimes", "median"],
    "tuner.pruning_warmup_epochs": ["tuner.pruning_warmup_epochs", ">= 1"],
    "tuner.direction": ["tuner.direction", "up", "min"],
    "tuner.max_epochs": ["tuner.max_epochs", ">= 1"],
    "tuner.num_initial_points": ["tuner.num_initial_points", "abc"],
    "tuner.start_from_defaults": ["tuner.start_from_defaults", "often"],
    "data.val_fraction": ["data.val_fraction", "1.5"],
    "data.test_fraction": ["data.test_fraction", "0"],
    "data.limit": ["data.limit", "0"],
    "data.image_size": ["data.image_size", "[0, 5]"],
    "data=cifar9": ["data", "cifar9", "digits"],
    "data.color_mode": ["data.color_mode", "sepia", "grayscale"],
    "final_fit.epochs": ["final_fit.epochs", ">= 1"],
    "final_fit.schedule": ["final_fit.schedule", "linear", "cosine"],
    "search_space.num_blocks empty": ["search_space.num_blocks", "empty"],
    "search_space.dropout": ["search_space.dropout", "1.5"],
    "search_space.learning_rate zero": ["search_space.learning_rate", "0"],
    "search_space.learning_rate min>max": ["search_space.learning_rate", "min"],
    "search_space.activation": ["search_space.activation", "swoosh", "relu"],
    "search_space.optimizer": ["search_space.optimizer", "adagrad9", "adam"],
    "search_space.global_pooling": ["search_space.global_pooling", "median", "flatten"],
    "search_space.batch_norm": ["search_space.batch_norm", "maybe"],
    "search_space.dense_units": ["search_space.dense_units", "-1"],
    "search_space.max_params": ["search_space.max_params", "0"],
    "search_space unknown key": ["colour"],
    "sweep.name with a space": ["sweep.name", "plain folder name"],
    "sweep.name hidden": ["sweep.name", ".hidden"],
    "experiment=nope": ["experiment", "nope", "quick"],
    "export.format": ["export.format", "gif", "onnx"],
    "ui.port text": ["ui.port", "abc"],
    "results.top zero": ["results.top", ">= 1"],
    "results.top text": ["results.top", "many"],
    "npz NaN in x": ["nan.npz", "x_train", "NaN"],
    "npz Inf in x": ["inf.npz", "x_train", "infinite"],
    "npz float labels": ["float_labels.npz", "y_train", "integer class labels", "0.5"],
    "npz NaN labels": ["nan_labels.npz", "y_train", "NaN"],
    "npz text images": ["text.npz", "x_train", "numbers"],
    "npz flat (N, D)": ["flat.npz", "x_train", "(N, H, W)"],
    "npz one class": ["one_class.npz", "2 classes"],
    "npz unseen test label": ["unseen.npz", "y_test", "not present in y_train"],
    "npz not a zip": ["notes.txt", "not a valid .npz"],
    "npz empty split": ["empty.npz", "empty"],
    "image_folder unreadable": ["broken.png"],
    "idx truncated": ["train-images-idx3-ubyte"],
}




def _npz(path: Path, x_train, y_train, x_test=None, y_test=None) -> None:
    x_test = np.zeros((4, 8, 8), np.float32) if x_test is None else x_test
    y_test = np.array([0, 1, 0, 1]) if y_test is None else y_test
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    """The bad data files the catalogue's DATA/... paths name."""
    folder = tmp_path_factory.mktemp("bad-data")
    x, y = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32), np.arange(20) % 2
    with_nan, with_inf = x.copy(), x.copy()
    with_nan[3, 2, 2], with_inf[5, 1, 1] = np.nan, np.inf
    _npz(folder / "nan.npz", with_nan, y)
    _npz(folder / "inf.npz", with_inf, y)
    _npz(folder / "float_labels.npz", x, np.where(y == 1, 0.5, 0.0))
    _npz(folder / "nan_labels.npz", x, np.where(np.arange(20) == 7, np.nan, y))
    _npz(folder / "text.npz", np.full((20, 8, 8), "a"), y)
    _npz(folder / "flat.npz", x.reshape(20, 64), y, x_test=np.zeros((4, 64)))
    _npz(folder / "one_class.npz", x, np.zeros(20, int))
    _npz(folder / "unseen.npz", x, y, y_test=np.array([0, 1, 7, 1]))
    _npz(folder / "empty.npz", x[:0], y[:0])
    (folder / "notes.txt").write_text("not an archive\n")
    for name in ("a", "b"):
        (folder / "images" / name).mkdir(parents=True)
        (folder / "images" / name / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "idx").mkdir()
    header = b"\0\0\x08\x03" + np.array([10, 28, 28], ">u4").tobytes()
    with gzip.open(folder / "idx" / "train-images-idx3-ubyte.gz", "wb") as file:
        file.write(header + bytes(100))   # 10 images announced, 100 bytes given
    return folder


def _args(label: str, data: Path) -> list[str]:
    """A case's arguments, DATA/ replaced by the bad_data folder."""
    return [arg.replace("=DATA/", f"={data}/") for arg in BAD_INPUTS[label]]


def _run(command, *args, env, cwd, timeout=600):
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


QUICK = ["experiment=quick", "training.epochs=1", "data.limit=200"]


def test_a_sweep_named_after_a_users_folder_deletes_nothing(cnnsearch, cli_env, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    root = tmp_path / "out"
    out = _run(cnnsearch, "sweep", f"sweep.name={victim}", "sweep.resume=false", *QUICK,
               f"paths.root={root}", env=cli_env, cwd=tmp_path)
    _check_one_line_error(out.returncode, out.stdout, out.stderr, root, "sweep.name absolute")
    assert (victim / "notes.txt").read_text() == "keep me"


def test_a_total_budget_below_one_epoch_is_one_error_line_and_writes_nothing(
        cnnsearch, cli_env, tmp_path):
    """Known only once the data is loaded and the first candidate timed: its one line
    follows the data line, before the store or the sweep folder is written."""
    root = tmp_path / "root"
    out = _run(cnnsearch, "sweep", "budget.seconds=10.5", f"paths.root={root}", env=cli_env,
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    *before, line = error_lines(out.stderr)
    assert [entry for entry in before if "data=digits" not in entry] == []
    assert line.startswith("cnnsearch: error: budget.seconds=10.5 is too small"), line
    assert "one epoch of the first candidate" in line
    assert out.stdout == ""
    assert not root.exists() or list(root.rglob("*")) == [], list(root.rglob("*"))


def test_the_catalogue_has_at_least_60_cases():
    assert len(BAD_INPUTS) >= 60 and set(NAMED) == set(BAD_INPUTS)


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


# Calls search.app.cli.main (what the console script runs) once per case in ONE fresh process,
# fds 1 and 2 redirected to a file pair per case: every case in a clean process would pay
# TensorFlow's import each time, and in pytest's own process Hydra reconfigures logging.
DRIVER = """
import json, os, sys
from hydra.core.global_hydra import GlobalHydra
from cnnsearch.search.app.cli import main

cases, folder = json.loads(sys.argv[1]), sys.argv[2]
codes, saved = {}, (os.dup(1), os.dup(2))
for i, args in cases:
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
    codes[i] = code
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, cli_env, bad_data):
    """label -> (exit code, stdout, stderr, paths.root) of main() for every bad input."""
    base = tmp_path_factory.mktemp("bad")
    roots = {label: base / f"root{i}" for i, label in enumerate(BAD_INPUTS)}
    cases = [(i, [*_args(label, bad_data), f"paths.root={roots[label]}"])
             for i, label in enumerate(BAD_INPUTS)]
    (base / "streams").mkdir()
    # two drivers, one per core, each a share of the cases
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cases[k::2]),
                                 str(base / "streams")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cli_env, cwd=base)
               for k in range(2)]
    codes = {}
    for driver in drivers:
        stdout, stderr = driver.communicate(timeout=300)
        assert driver.returncode == 0, stderr[-3000:]
        codes.update(json.loads(stdout.strip().splitlines()[-1]))
    codes = {int(i): code for i, code in codes.items()}
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


@pytest.mark.slow
def test_every_bad_input_through_the_console_script(cnnsearch, cli_env, tmp_path, bad_data):
    runs = tmp_path / "runs"
    runs.mkdir()

    def run(label):
        root = runs / f"root{list(BAD_INPUTS).index(label)}"
        out = _run(cnnsearch, *_args(label, bad_data), f"paths.root={root}", env=cli_env,
                   cwd=runs, timeout=300)
        return label, out, root

    with ThreadPoolExecutor(max_workers=3) as pool:   # mostly TensorFlow's import
        for label, out, root in pool.map(run, BAD_INPUTS):
            _check_one_line_error(out.returncode, out.stdout, out.stderr, root, label)
    assert list(runs.iterdir()) == []


