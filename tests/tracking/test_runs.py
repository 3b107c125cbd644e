"""tracking.runs: what one real sweep leaves in the MLflow store (parent run, nested trial
runs, per-epoch metrics, registered model), and how failed trials are recorded."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path

import keras
import matplotlib.image
import mlflow
import numpy as np
import pytest
import yaml
from mlflow.entities import LoggedModelStatus

from cnnsearch.search.config import DataConfig
from cnnsearch.search.data.datasets import load_dataset
from tests.conftest import error_lines, run_without_cnnsearch
from tests.tracking.conftest import (
    QUICK,
    REGISTERED_MODEL,
    open_experiment,
    store_uri,
)

PARENT_METRICS = ("best_val_accuracy", "test_accuracy", "test_loss", "n_trials", "n_failed",
                  "n_skipped", "sweep_seconds")
CHILD_METRICS = ("param_count", "flops", "train_seconds", "epochs_run", "images_per_second")
PLOTS = {"val_accuracy_vs_params.png", "val_accuracy_per_trial.png", "learning_curves_top.png"}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {info.path for info in client.list_artifacts(run_id, path)}


def _text(client, run_id: str, path: str) -> str:
    with open(client.download_artifacts(run_id, path)) as handle:
        return handle.read()


# -- the parent run --------------------------------------------------------------------


def test_one_finished_parent_run_per_sweep(swept):
    (parent,) = swept.store.parents
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["cnnsearch.role"] == "sweep"
    assert parent.info.run_name == swept.sweep_dir.name
    assert "mlflow.parentRunId" not in parent.data.tags


def test_parent_params_are_the_flattened_config(swept):
    params = swept.parent.data.params
    assert params["tuner.name"] == "random"
    assert params["tuner.max_trials"] == "3"
    assert params["training.epochs"] == "2"
    assert params["data.name"] == "digits"
    assert params["data.limit"] == "200"
    assert params["seed"] == "1"
    assert params["search_space.filters"] == "[8, 16]"   # lists stay JSON
    assert re.fullmatch(r"[0-9a-f]{12}", params["space_hash"])
    assert params["space_hash"] == swept.parent.data.tags["cnnsearch.space_hash"]


def test_runs_carry_a_description_and_a_visible_git_commit(swept):
    tags = swept.parent.data.tags
    note = tags["mlflow.note.content"]
    assert swept.sweep_dir.name in note and "random search of CNNs on digits" in note
    assert "highest val_accuracy" in note
    best = tags["cnnsearch.best_trial"]
    assert f"Winner: trial {best}, `{tags['cnnsearch.architecture']}`" in note
    assert f"test accuracy {swept.parent.data.metrics['test_accuracy']:.4f}" in note
    if "mlflow.source.git.commit" in tags:
        assert tags["cnnsearch.git_commit"] == tags["mlflow.source.git.commit"]
    for child in swept.store.children:
        assert child.data.tags["mlflow.note.content"].startswith(
            f"Trial {child.data.tags['cnnsearch.trial_id']}: "
            f"`{child.data.tags['cnnsearch.architecture']}`")


def test_the_data_set_is_the_sweeps_logged_input(swept):
    run = swept.store.client.get_run(swept.parent.info.run_id)
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == "digits"
    assert re.fullmatch(r"[0-9a-f]{12}", logged.dataset.digest)
    assert {(t.key, t.value) for t in logged.tags} == {("mlflow.data.context", "training")}
    profile = json.loads(logged.dataset.profile)
    assert profile["image_shape"] == [8, 8, 1] and len(profile["classes"]) == 10
    assert profile["train"] + profile["val"] + profile["test"] >= 200   # data.limit=200 train


def test_parent_params_are_only_what_the_sweep_uses(swept):
    params = swept.parent.data.params
    assert "tuner.max_trials" in params and "tuner.pruning" in params   # random search knobs
    for unused in ("tuner.max_epochs", "tuner.factor", "tuner.alpha", "tuner.beta",
                   "tuner.num_initial_points", "ui.port", "ui.host", "results.top"):
        assert unused not in params, unused
    assert not [key for key in params if key.startswith(("export.", "results.", "ui."))]
    config = yaml.safe_load(_text(swept.store.client, swept.parent.info.run_id, "config.yaml"))
    assert config["ui"]["port"] == 5000   # the artifact keeps the whole composed config


def test_parent_metrics_summarise_the_sweep(swept):
    metrics = swept.parent.data.metrics
    for name in PARENT_METRICS:
        assert name in metrics, name
    assert metrics["n_trials"] == 3
    assert metrics["n_failed"] == 0
    assert metrics["n_skipped"] == 0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_loss"] > 0
    assert metrics["sweep_seconds"] > 0
    best = max(run.data.metrics["best_val_accuracy"] for run in swept.store.children)
    assert metrics["best_val_accuracy"] == pytest.approx(best)


def test_parent_tags_name_the_environment(swept):
    tags = swept.parent.data.tags
    assert tags["cnnsearch.keras_backend"] == keras.backend.backend()
    assert tags["cnnsearch.keras_version"] == keras.__version__
    assert tags["cnnsearch.device"].strip()
    best = tags["cnnsearch.best_trial"]
    assert best in {run.data.tags["cnnsearch.trial_id"] for run in swept.store.children}


def test_parent_artifacts(swept):
    client, run_id = swept.store.client, swept.parent.info.run_id
    assert {"config.yaml", "search_space.yaml", "leaderboard.csv",
            "plots"} <= _artifacts(client, run_id)
    assert {p.split("/")[-1] for p in _artifacts(client, run_id, "plots")} == PLOTS
    for plot in PLOTS:   # big enough to read (the first version was 545x394)
        width, height = matplotlib.image.imread(
            client.download_artifacts(run_id, f"plots/{plot}")).shape[1::-1]
        assert width >= 1000 and height >= 600, (plot, width, height)

    config = yaml.safe_load(_text(client, run_id, "config.yaml"))
    assert config["training"]["epochs"] == 2
    assert config["paths"]["root"] == str(swept.root)
    space = yaml.safe_load(_text(client, run_id, "search_space.yaml"))
    assert space == config["search_space"]
    assert space["filters"] == [8, 16]

    rows = list(csv.DictReader(io.StringIO(_text(client, run_id, "leaderboard.csv"))))
    assert sorted(row["run_id"] for row in rows) == sorted(
        run.info.run_id for run in swept.store.children)


# -- the trial (child) runs --------------------------------------------------------------


def test_three_nested_finished_trial_runs(swept):
    children = swept.store.children
    assert len(children) == 3
    assert ({run.info.run_id for run in swept.store.children_of(swept.parent.info.run_id)}
            == {run.info.run_id for run in children})
    trial_ids = [run.data.tags["cnnsearch.trial_id"] for run in children]
    assert len(set(trial_ids)) == 3
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["cnnsearch.role"] == "trial"
        assert run.data.tags["cnnsearch.status"] == "completed"
        assert "cnnsearch.reason" not in run.data.tags


def test_trial_params_are_the_active_hyperparameters_only(swept):
    children = swept.store.children
    block_counts = sorted(int(run.data.params["num_blocks"]) for run in children)
    assert 1 in block_counts and 2 in block_counts, (
        f"seed=1 should draw 1- and 2-block candidates, got {block_counts}")
    for run in children:
        params = run.data.params
        blocks = int(params["num_blocks"])
        for b in (1, 2):
            keys = {k for k in params if k.startswith(f"block{b}_")}
            if b <= blocks:
                assert {f"block{b}_filters", f"block{b}_pooling"} <= keys
            else:
                assert keys == set(), (blocks, keys)
        assert not any(k.startswith(("block3_", "tuner/")) for k in params)
        assert {"learning_rate", "optimizer", "dense_units", "global_pooling"} <= set(params)


def test_trial_metrics_and_artifacts(swept):
    client = swept.store.client
    for run in swept.store.children:
        metrics = run.data.metrics
        for name in CHILD_METRICS:
            assert name in metrics, name
        assert metrics["param_count"] > 0 and metrics["flops"] > 0
        assert metrics["epochs_run"] == 2
        assert metrics["train_seconds"] > 0 and metrics["images_per_second"] > 0
        assert {"architecture.json", "summary.txt"} <= _artifacts(client, run.info.run_id)
        architecture = json.loads(_text(client, run.info.run_id, "architecture.json"))
        assert len(architecture["blocks"]) == int(run.data.params["num_blocks"])
        assert architecture["blocks"][0]["filters"] == int(run.data.params["block1_filters"])
        summary = _text(client, run.info.run_id, "summary.txt")
        assert summary.splitlines()[0] == run.data.tags["cnnsearch.architecture"]
        assert f"{int(metrics['param_count']):,}" in summary


def test_per_epoch_history(swept):
    client = swept.store.client
    for run in swept.store.children:
        epochs = int(run.data.metrics["epochs_run"])
        for name in ("val_accuracy", "loss"):
            history = sorted(client.get_metric_history(run.info.run_id, name),
                             key=lambda m: m.step)
            assert [m.step for m in history] == list(range(epochs)), name
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert max(m.value for m in history) == pytest.approx(
            run.data.metrics["best_val_accuracy"])


# -- the registered model ----------------------------------------------------------------


# Where the winner is deployed, cnnsearch is not installed: stock Keras and MLflow only.
LOAD_EVERY_WAY = """
    import json
    import keras, mlflow, numpy as np

    store, sweep_dir, parent_id, images = sys.argv[1:]
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    x = np.load(images)
    best = keras.saving.load_model(f"{sweep_dir}/best_model.keras", safe_mode=True)
    loaded = {
        "best_model.keras": best.predict(x, verbose=0),
        "registered (pyfunc)": mlflow.pyfunc.load_model("models:/REGISTERED/latest").predict(x),
        "run model (keras flavour)": mlflow.keras.load_model(f"runs:/{parent_id}/model")
                                          .predict(x, verbose=0),
    }
    layers = [type(layer).__name__ for layer in best.layers]
    print(json.dumps({"layers": layers,
                      "diff": {k: float(np.abs(v - loaded["best_model.keras"]).max())
                               for k, v in loaded.items()},
                      "shape": list(np.asarray(loaded["registered (pyfunc)"]).shape)}))
"""


def test_saved_and_registered_models_load_and_predict_without_cnnsearch(swept, tmp_path):
    images = load_dataset(DataConfig("digits", limit=200), seed=0).x_test[:16].astype("float32")
    np.save(tmp_path / "x.npy", images)
    done = run_without_cnnsearch(LOAD_EVERY_WAY.replace("REGISTERED", REGISTERED_MODEL),
                                 store_uri(swept.root), swept.sweep_dir,
                                 swept.parent.info.run_id, tmp_path / "x.npy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Sequential" in report["layers"]   # the winner's sum pooling
    assert report["shape"] == [16, 10]
    assert max(report["diff"].values()) <= 1e-5, report["diff"]
    best = keras.saving.load_model(swept.sweep_dir / "best_model.keras")
    # outputs that differ from image to image: a wrong load could not match them by chance
    assert best.predict(images, verbose=0).std(axis=0).max() > 1e-3


def test_the_winner_is_the_sweeps_logged_model(swept):
    """An MLflow model (the experiment's Models tab), not loose files among the artifacts."""
    client, parent = swept.store.client, swept.parent
    (model,) = client.search_logged_models(
        [parent.info.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    assert (model.name, model.status) == ("model", LoggedModelStatus.READY)
    assert model.tags["cnnsearch.sweep"] == parent.info.run_name
    outputs = client.get_run(parent.info.run_id).outputs.model_outputs
    assert [output.model_id for output in outputs] == [model.model_id]
    files = {info.path for info in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "requirements.txt", "input_example.json", "data"} <= files
    (version,) = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert version.source == f"models:/{model.model_id}"


def test_every_saved_model_loads_in_safe_mode_and_holds_no_code(swept):
    """The sweep folder's model and the logged model: no Lambda layer, no serialized
    function, no pickle; Keras loads both with safe_mode=True."""
    client, parent = swept.store.client, swept.parent
    (logged,) = client.search_logged_models(
        [parent.info.experiment_id], filter_string=f"source_run_id = '{parent.info.run_id}'")
    files = [swept.sweep_dir / "best_model.keras", Path(mlflow.artifacts.download_artifacts(
        f"{logged.artifact_location}/data/model.keras"))]
    for file in files:
        keras.saving.load_model(file, safe_mode=True)
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            config = archive.read("config.json").decode()
        assert not [n for n in names if n.endswith((".pkl", ".pickle", ".py"))], names
        for code in ('"Lambda"', "__lambda__", '"function"', "TFOpLambda"):
            assert code not in config, (file, code)


def test_model_version_tags_and_requirements(swept):
    client, parent = swept.store.client, swept.parent
    (version,) = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert version.run_id == parent.info.run_id
    assert version.tags["test_accuracy"] == f"{parent.data.metrics['test_accuracy']:.4f}"
    assert version.tags["architecture"] == parent.data.tags["cnnsearch.architecture"]
    # pinned explicitly: MLflow's inference cannot load our custom layer and falls back
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    requirements = Path(mlflow.artifacts.download_artifacts(
        f"{model.artifact_location}/requirements.txt")).read_text().split()
    assert f"keras=={keras.__version__}" in requirements
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        assert f"tensorflow=={tf.__version__}" in requirements
    assert "inferring pip requirements" not in swept.stderr


# -- failed trials -----------------------------------------------------------------------


def test_nan_trials_are_failed_runs_with_the_reason(cli_in_process, tmp_path):
    """A learning rate of 1e300 (inf in float32) makes every candidate's loss NaN in its
    first epoch; after 3 such trials keras-tuner stops the search and the sweep fails."""
    root = tmp_path / "out"
    code, _, err = cli_in_process(
        "sweep", f"paths.root={root}", *QUICK, "training.epochs=1",
        "search_space.learning_rate=[1e300]", "search_space.optimizer=[sgd]")
    assert code == 2, err[-3000:]
    errors = [line for line in error_lines(err) if line.startswith("cnnsearch: error:")]
    assert errors == [error_lines(err)[-1]]
    assert "the search stopped" in errors[0] and "NaN" in errors[0]

    store = open_experiment(root)
    (parent,) = store.parents
    assert parent.info.status == "FAILED"
    assert "the search stopped" in parent.data.tags["cnnsearch.reason"]
    children = store.children_of(parent.info.run_id)
    assert len(children) == 3
    for run in children:
        assert run.info.status == "FAILED"
        assert run.data.tags["cnnsearch.status"] == "failed"
        assert "loss became NaN at epoch 0" in run.data.tags["cnnsearch.reason"]
        assert "param_count" in run.data.metrics and "train_seconds" in run.data.metrics
