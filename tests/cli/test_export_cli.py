"""`cnnsearch export` end to end: the real console script over a real SQLite MLflow store.

One tiny sweep (2 trials, 1 epoch, sum pooling) runs once for the module; every test
then exports from it in a fresh process, as a user would. Several minutes in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnsearch.models.export import FORMATS

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).with_name("cnnsearch")
SWEEP = ("experiment=quick", "tuner.max_trials=2", "training.epochs=1", "data.limit=200",
         "search_space.pooling=[sum]")
REGISTERED = "cnnsearch-digits"
# What TensorFlow's C++ runtime and LiteRT write to stderr, out of Python's reach.
NOISE = ("I0000", "E0000", "W0000", "WARNING: All log messages",
         "To enable the following instructions", "INFO: Created TensorFlow Lite")
FILES = {"keras": "model.keras", "saved_model": "saved_model", "onnx": "model.onnx",
         "tflite": "model.tflite"}


def cnnsearch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The single line a user error leaves on stderr (TensorFlow noise aside)."""
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not line.startswith(NOISE)]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("cnnsearch: error: "), lines[0]
    return lines[0]


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_parity(manifest: dict, formats=FORMATS) -> None:
    assert list(manifest["files"]) == list(formats)
    for fmt, record in manifest["files"].items():
        assert record["parity_ok"] is True, fmt
        assert record["path"] == FILES[fmt]
        assert len(record["sha256"]) == 64 and record["bytes"] > 0
        if record["quantize"] == "none":
            assert record["max_abs_diff"] <= 1e-4, fmt
        assert record["top1_agreement"] >= 0.99, fmt


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> SimpleNamespace:
    """A finished sweep in a fresh root: its root, sweep name and MLflow parent run."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("root")
    ok(cnnsearch("sweep", *SWEEP, f"paths.root={root}"))
    client = MlflowClient(f"sqlite:///{root}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("digits")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   filter_string="tags.`cnnsearch.role` = 'sweep'")
    (folder,) = (root / "sweeps").iterdir()
    assert parent.info.run_name == folder.name
    return SimpleNamespace(root=root, name=folder.name, run_id=parent.info.run_id,
                           client=client, exports=root / "exports" / folder.name)


@pytest.fixture(scope="module")
def exported_all(swept) -> subprocess.CompletedProcess:
    assert not swept.exports.exists()
    return cnnsearch("export", "export.format=all", f"paths.root={swept.root}")


def test_export_all_writes_every_format_checks_it_and_logs_it(swept, exported_all):
    ok(exported_all)
    # The table's title (wrapped to the table's width) names the destination.
    assert f"exportto{swept.exports}" in "".join(exported_all.stdout.split())
    for column in ("format", "bytes", "max |diff|", "top-1 agreement", *FORMATS):
        assert column in exported_all.stdout
    assert sorted(p.name for p in swept.exports.iterdir()) == sorted(
        [*FILES.values(), "manifest.json"])
    assert [p.name for p in swept.exports.parent.iterdir()] == [swept.name]  # no staging left
    manifest = json.loads((swept.exports / "manifest.json").read_text())
    assert_parity(manifest)
    assert manifest["run_id"] == swept.run_id
    (model,) = swept.client.search_logged_models(
        [swept.client.get_run(swept.run_id).info.experiment_id],
        filter_string=f"source_run_id = '{swept.run_id}'")
    assert manifest["source"] == f"models:/{model.model_id}"   # the sweep's logged model
    assert manifest["input_shape"] == [8, 8, 1]
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert manifest["parity_sample"] == 256
    logged = {a.path for a in swept.client.list_artifacts(swept.run_id, "export")}
    assert logged == {f"export/{name}" for name in [*FILES.values(), "manifest.json"]}


def test_export_again_needs_overwrite(swept, exported_all):
    ok(exported_all)
    before = (swept.exports / "manifest.json").read_text()
    again = cnnsearch("export", "export.format=all", f"paths.root={swept.root}")
    assert again.returncode == 2
    line = error_line(again)
    assert f"export.dir {swept.exports} exists and is not empty" in line
    assert "export.overwrite=true" in line
    assert (swept.exports / "manifest.json").read_text() == before

    ok(cnnsearch("export", "export.format=all", "export.overwrite=true",
                 f"paths.root={swept.root}"))
    manifest = json.loads((swept.exports / "manifest.json").read_text())
    assert_parity(manifest)
    assert [p.name for p in swept.exports.parent.iterdir()] == [swept.name]


def test_export_a_registered_model_version(swept, tmp_path):
    destination = tmp_path / "reg"
    ok(cnnsearch("export", f"export.model=models:/{REGISTERED}/latest", "export.format=keras",
                 f"export.dir={destination}", f"paths.root={swept.root}"))
    assert sorted(p.name for p in destination.iterdir()) == ["manifest.json", "model.keras"]
    manifest = json.loads((destination / "manifest.json").read_text())
    assert manifest["source"] == f"models:/{REGISTERED}/latest"
    assert manifest["run_id"] == swept.run_id
    assert_parity(manifest, ("keras",))


def test_tflite_float16(swept, tmp_path):
    destination = tmp_path / "q16"
    ok(cnnsearch("export", "export.format=tflite", "export.quantize=float16",
                 f"export.dir={destination}", f"paths.root={swept.root}"))
    manifest = json.loads((destination / "manifest.json").read_text())
    assert manifest["files"]["tflite"]["quantize"] == "float16"
    assert_parity(manifest, ("tflite",))


@pytest.mark.parametrize(("overrides", "expected"), [
    (["export.model=models:/nope/1"], "export.model=models:/nope/1: Registered Model with "
                                      "name=nope not found"),
    (["export.run=0123456789abcdef0123456789abcdef"], "run 0123456789abcdef0123456789abcdef "
                                                      "is not a cnnsearch sweep"),
    (["export.format=pdf"], "export.format 'pdf' is unknown; choose from keras, saved_model, "
                            "onnx, tflite or all"),
    (["export.format=tflite", "export.quantize=int3"], "export.quantize 'int3' is unknown"),
    (["export.format=onnx", "export.opset=19"], "export.opset 19 is not supported"),
], ids=["unknown-model", "unknown-run", "unknown-format", "unknown-quantize", "bad-opset"])
def test_a_user_error_is_one_line_and_exit_2(swept, tmp_path, overrides, expected):
    destination = tmp_path / "out"
    done = cnnsearch("export", *overrides, f"export.dir={destination}",
                     f"paths.root={swept.root}")
    assert done.returncode == 2
    assert expected in error_line(done)
    assert not destination.exists()


@pytest.mark.parametrize("tracking", ["local", "none"])
def test_nothing_to_export_in_an_empty_root(tmp_path, tracking):
    done = cnnsearch("export", f"tracking={tracking}", f"paths.root={tmp_path}")
    assert done.returncode == 2
    assert "no finished sweep" in error_line(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store created as a side effect


def test_export_without_tracking_reads_the_sweep_folder(tmp_path):
    ok(cnnsearch("sweep", *SWEEP, "tracking=none", f"paths.root={tmp_path}"))
    assert not (tmp_path / "mlflow").exists()
    (folder,) = (tmp_path / "sweeps").iterdir()
    ok(cnnsearch("export", "tracking=none", "export.format=keras", f"paths.root={tmp_path}"))
    destination = tmp_path / "exports" / folder.name
    assert sorted(p.name for p in destination.iterdir()) == ["manifest.json", "model.keras"]
    manifest = json.loads((destination / "manifest.json").read_text())
    assert manifest["source"] == str(folder / "best_model.keras")
    assert manifest["run_id"] is None
    assert manifest["test_accuracy"] == json.loads(
        (folder / "result.json").read_text())["test_accuracy"]
    assert_parity(manifest, ("keras",))
    assert not (tmp_path / "mlflow").exists()
