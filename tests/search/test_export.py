"""search/export.py: format parsing, up-front checks, parity, and the all-or-nothing export."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re

import keras
import numpy as np
import pytest

import cnnsearch.models
from cnnsearch.models import Architecture, Block, Head
from cnnsearch.models.export import FORMATS, export_model, predict_with_runtime
from cnnsearch.search.errors import UserError
from cnnsearch.search.export import (
    FLOAT_TOLERANCE,
    MANIFEST,
    ExportSource,
    ExportSpec,
    check_spec,
    export_winner,
    parity,
    parse_formats,
)

ARCH = Architecture((8, 8, 1), 10, (Block(4, pooling="sum", padding="same"),
                                    Block(8, pooling="sum", padding="valid")),
                    Head("flatten", 16))


@pytest.fixture(scope="module")
def source() -> ExportSource:
    keras.utils.set_random_seed(0)
    model = cnnsearch.models.compile_model(cnnsearch.models.build_model(ARCH))
    sample = np.random.default_rng(0).random((32, 8, 8, 1), dtype="float32")
    return ExportSource(model, sample, tuple(str(i) for i in range(10)), "runs:/abc/model",
                        run_id="abc", test_accuracy=0.5)


def _leftovers(parent) -> list[str]:
    """Staging folders an export may have left beside its destination."""
    return [p.name for p in parent.iterdir() if "partial" in p.name] if parent.exists() else []


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# -- parity ------------------------------------------------------------------------------


def _probabilities(n: int = 100, classes: int = 10) -> np.ndarray:
    """Rows with a clear winner (0.5 against at most 0.1 for the others)."""
    rng = np.random.default_rng(0)
    rows = rng.random((n, classes)).astype("float32") * 0.05
    rows[np.arange(n), rng.integers(0, classes, n)] = 0.5
    return rows


def _flip(reference: np.ndarray, rows: int) -> np.ndarray:
    """A copy whose first ``rows`` rows pick another class."""
    out = reference.copy()
    for row in range(rows):
        winner = int(out[row].argmax())
        out[row, (winner + 1) % out.shape[1]] = 0.9
    return out


def test_identical_predictions_match():
    reference = _probabilities()
    record = parity(reference, reference.copy())
    assert record == {"max_abs_diff": 0.0, "top1_agreement": 1.0, "parity_ok": True}


def test_float_formats_allow_a_small_difference_only():
    reference = _probabilities()
    close, far = reference.copy(), reference.copy()
    close[3, 4] += 5e-5
    far[3, 4] += 2e-4
    assert parity(reference, close)["parity_ok"]
    record = parity(reference, far)
    assert not record["parity_ok"]
    assert record["max_abs_diff"] == pytest.approx(2e-4, rel=1e-2)
    assert record["max_abs_diff"] > FLOAT_TOLERANCE
    assert record["top1_agreement"] == 1.0  # same classes, still refused: a float format


def test_quantised_formats_are_judged_by_top1_agreement():
    reference = _probabilities()
    noisy = reference + 0.01  # far beyond the float tolerance, same classes
    assert parity(reference, noisy, "dynamic")["parity_ok"]
    one = parity(reference, _flip(reference, 1), "float16")
    assert one["top1_agreement"] == pytest.approx(0.99)
    assert one["parity_ok"]
    two = parity(reference, _flip(reference, 2), "float16")
    assert two["top1_agreement"] == pytest.approx(0.98)
    assert not two["parity_ok"]


def test_parity_accepts_a_runtime_output_of_another_layout():
    reference = _probabilities(4)
    assert parity(reference, reference.reshape(1, 4, 10).astype("float64"))["parity_ok"]


# -- parse_formats and check_spec -------------------------------------------------------------


def test_parse_formats():
    assert parse_formats("all") == FORMATS
    assert parse_formats("onnx,tflite") == ("onnx", "tflite")
    assert parse_formats(" keras , saved_model ") == ("keras", "saved_model")
    assert parse_formats("tflite") == ("tflite",)


@pytest.mark.parametrize("value", ["pdf", "onnx,pdf", ""])
def test_an_unknown_format_is_one_line_naming_the_choices(value):
    with pytest.raises(UserError) as error:
        parse_formats(value)
    message = _one_line(error)
    assert "export.format" in message
    assert all(fmt in message for fmt in (*FORMATS, "all"))
    if value:
        assert "'pdf'" in message


def test_check_spec_refuses_a_non_empty_destination_without_overwrite(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")   # a previous export
    with pytest.raises(UserError) as error:
        check_spec(ExportSpec(("keras",), tmp_path))
    message = _one_line(error)
    assert f"export.dir {tmp_path}" in message
    assert "export.overwrite=true" in message
    check_spec(ExportSpec(("keras",), tmp_path, overwrite=True))
    check_spec(ExportSpec(("keras",), tmp_path / "new"))       # not there yet
    (tmp_path / "empty").mkdir()
    check_spec(ExportSpec(("keras",), tmp_path / "empty"))     # there but empty


def test_overwrite_never_wipes_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "mlflow.db").write_text("someone's results")
    with pytest.raises(UserError) as error:
        check_spec(ExportSpec(("keras",), tmp_path, overwrite=True))
    assert "not a cnnsearch export" in _one_line(error)
    assert (tmp_path / "mlflow.db").exists()


def test_check_spec_refuses_a_destination_that_is_a_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("not a folder")
    for overwrite in (False, True):
        with pytest.raises(UserError) as error:
            check_spec(ExportSpec(("onnx",), target, overwrite=overwrite))
        assert f"export.dir {target}" in _one_line(error)
    assert target.read_text() == "not a folder"


def test_check_spec_refuses_an_unknown_quantisation(tmp_path):
    with pytest.raises(UserError) as error:
        check_spec(ExportSpec(("tflite",), tmp_path, quantize="int3"))
    message = _one_line(error)
    assert "export.quantize 'int3'" in message
    assert all(q in message for q in ("none", "float16", "dynamic"))


@pytest.mark.parametrize("opset", [6, 19, 99])
def test_check_spec_refuses_an_onnx_opset_the_converter_cannot_write(tmp_path, opset):
    with pytest.raises(UserError) as error:
        check_spec(ExportSpec(("keras", "onnx"), tmp_path, opset=opset))
    message = _one_line(error)
    assert f"export.opset {opset} is not supported" in message
    assert re.search(r"choose from 7 to 1[89]", message)
    check_spec(ExportSpec(("keras", "tflite"), tmp_path, opset=opset))  # no ONNX: no matter
    check_spec(ExportSpec(("onnx",), tmp_path, opset=13))


@pytest.fixture
def without_tf2onnx(monkeypatch):
    """importlib.util.find_spec (as models.export.missing_packages uses it) misses tf2onnx."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "tf2onnx" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_check_spec_names_a_missing_package_and_the_extra(tmp_path, without_tf2onnx):
    with pytest.raises(UserError) as error:
        check_spec(ExportSpec(("keras", "onnx"), tmp_path))
    message = _one_line(error)
    assert "export.format=onnx" in message
    assert "tf2onnx" in message
    assert "cnnsearch[export]" in message
    assert "onnxruntime" not in message  # only what is missing
    check_spec(ExportSpec(("keras", "saved_model", "tflite"), tmp_path))  # need no tf2onnx


def test_a_missing_package_stops_the_export_before_anything_is_written(tmp_path, source,
                                                                       without_tf2onnx):
    with pytest.raises(UserError, match="tf2onnx"):
        export_winner(source, ExportSpec(("keras", "onnx"), tmp_path / "exports" / "x"))
    assert not (tmp_path / "exports").exists()


# -- export_winner ---------------------------------------------------------------------------


def test_export_winner_writes_every_format_and_a_manifest(tmp_path, source):
    destination = tmp_path / "exports" / "sweep-1"
    assert not destination.exists()
    manifest = export_winner(source, ExportSpec(FORMATS, destination))

    assert destination.is_dir()
    assert _leftovers(destination.parent) == []
    assert sorted(p.name for p in destination.iterdir()) == sorted(
        ["manifest.json", "model.keras", "saved_model", "model.onnx", "model.tflite"])
    assert json.loads((destination / MANIFEST).read_text()) == manifest
    assert manifest["input_shape"] == [8, 8, 1]
    assert manifest["input_name"] == "image"
    assert manifest["class_names"] == [str(i) for i in range(10)]
    assert "[0, 1]" in manifest["preprocessing"]
    assert manifest["source"] == "runs:/abc/model"
    assert manifest["run_id"] == "abc"
    assert manifest["test_accuracy"] == 0.5
    assert manifest["parity_sample"] == 32
    assert list(manifest["files"]) == list(FORMATS)
    for fmt, record in manifest["files"].items():
        path = destination / record["path"]
        assert path.exists(), fmt
        assert re.fullmatch(r"[0-9a-f]{64}", record["sha256"]), fmt
        assert record["bytes"] > 0
        assert record["max_abs_diff"] <= FLOAT_TOLERANCE, fmt
        assert record["top1_agreement"] == 1.0, fmt
        assert record["parity_ok"] is True
        assert record["quantize"] == "none"
        assert 0 < record["export_seconds"] < 300
        if path.is_file():
            assert record["bytes"] == path.stat().st_size, fmt
            assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), fmt
        else:
            assert record["bytes"] == sum(f.stat().st_size for f in path.rglob("*")
                                          if f.is_file())
    assert not (destination / ".tflite_source").exists()


def test_quantize_applies_to_tflite_only(tmp_path, source):
    manifest = export_winner(source, ExportSpec(("keras", "tflite"), tmp_path / "q",
                                                quantize="float16"))
    assert manifest["files"]["tflite"]["quantize"] == "float16"
    assert manifest["files"]["keras"]["quantize"] == "none"
    assert manifest["files"]["tflite"]["parity_ok"]


def _corrupt_onnx(path) -> None:
    """Add noise to the largest float weight of an ONNX file, in place."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path)
    floats = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    largest = max(floats, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(largest)
    noise = np.random.default_rng(1).normal(0.0, 1.0, weights.shape).astype(weights.dtype)
    largest.CopyFrom(numpy_helper.from_array(weights + noise, largest.name))
    onnx.save(graph, path)


def test_a_corrupted_artifact_fails_the_export_and_writes_nothing(tmp_path, source):
    """The ONNX file really is damaged after writing: onnxruntime's answers differ."""
    def export_then_corrupt(model, fmt, directory, **kwargs):
        path = export_model(model, fmt, directory, **kwargs)
        if fmt == "onnx":
            _corrupt_onnx(path)
        return path

    destination = tmp_path / "exports" / "sweep-1"
    with pytest.raises(UserError) as error:
        export_winner(source, ExportSpec(("keras", "onnx", "tflite"), destination),
                      write=export_then_corrupt)
    message = _one_line(error)
    assert "export.format=onnx does not match the trained model" in message
    assert "nothing was written" in message
    assert not destination.exists()
    assert _leftovers(destination.parent) == []


def test_a_runtime_disagreement_names_the_format(tmp_path, source):
    def predict(fmt, path, x):
        out = predict_with_runtime(fmt, path, x)
        return _flip(out, 2) if fmt == "tflite" else out

    destination = tmp_path / "sweep-1"
    with pytest.raises(UserError) as error:
        export_winner(source, ExportSpec(("keras", "tflite"), destination, quantize="dynamic"),
                      predict=predict)
    message = _one_line(error)
    assert "export.format=tflite" in message
    assert "top-1 agreement 93.75%" in message  # 2 of 32 flipped
    assert not destination.exists()
    assert _leftovers(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_export(tmp_path, source):
    destination = tmp_path / "sweep-1"
    export_winner(source, ExportSpec(("keras",), destination))
    before = (destination / MANIFEST).read_text()
    with pytest.raises(UserError, match="export.format=keras"):
        export_winner(source, ExportSpec(("keras",), destination, overwrite=True),
                      predict=lambda fmt, path, x: predict_with_runtime(fmt, path, x) + 1e-3)
    assert (destination / MANIFEST).read_text() == before
    assert sorted(p.name for p in destination.iterdir()) == ["manifest.json", "model.keras"]
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_whole_destination(tmp_path, source):
    destination = tmp_path / "sweep-1"
    destination.mkdir()
    (destination / "stale.onnx").write_text("from an older export")
    (destination / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="export.overwrite=true"):
        export_winner(source, ExportSpec(("keras",), destination))
    assert (destination / "stale.onnx").exists()
    export_winner(source, ExportSpec(("keras",), destination, overwrite=True))
    assert sorted(p.name for p in destination.iterdir()) == ["manifest.json", "model.keras"]
    assert _leftovers(tmp_path) == []


def test_an_augmented_sweep_saves_and_exports_an_inference_only_model(make_spec, tmp_path):
    """Augmentation trains the candidates; the saved winner and every export are without
    it and pass their parity checks."""
    from cnnsearch.search.sweep import run_sweep
    from tests.conftest import load_space

    space = load_space("small") | {"augmentation": {"flip": ["horizontal"],
                                                    "translate": [0.1], "contrast": [0.1]}}
    result, model = run_sweep(make_spec(search_space=space, tuner={"max_trials": 1}))
    assert (result.best_values["augment_flip"], result.best_values["augment_translate"]) == (
        "horizontal", 0.1)
    assert "aug:flip-t0.1-c0.1" in result.architecture
    saved = keras.saving.load_model(result.model_path, safe_mode=True)
    for network in (model, saved):
        assert not [layer.name for layer in network.layers if "augment" in layer.name]
    sample = np.random.default_rng(0).random((32, 8, 8, 1), dtype="float32")
    destination = tmp_path / "export"
    manifest = export_winner(ExportSource(saved, sample, tuple(map(str, range(10))),
                                          result.model_path), ExportSpec(FORMATS, destination))
    assert all(record["parity_ok"] for record in manifest["files"].values())
    exported = keras.saving.load_model(destination / "model.keras", safe_mode=True)
    assert [layer.name for layer in exported.layers] == [layer.name for layer in saved.layers]
