"""models/export.py: every format written, reloaded by its own runtime, and checked.

A small network with sum pooling (``same`` and ``valid`` padding) is trained for a
few epochs on the bundled digits (8x8 grey images), exported to every format, and
each artifact is reloaded in a fresh Python process by the runtime a deployment
would use; its predictions must match the Keras model's.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnsearch.models import Architecture, Block, Head, build_model, compile_model
from cnnsearch.models.export import (
    FILENAMES,
    FORMATS,
    export_model,
    missing_packages,
    predict_with_runtime,
)
from cnnsearch.search.config import DataConfig
from cnnsearch.search.data.datasets import load_dataset
from cnnsearch.search.export import FLOAT_TOLERANCE, QUANTIZED_AGREEMENT, parity
from tests.conftest import run_without_cnnsearch

SMALL = Architecture((8, 8, 1), 10, (Block(4, pooling="sum", padding="same"),
                                     Block(8, pooling="sum", padding="valid")),
                     Head("flatten", 16))
# Wide enough that dynamic-range quantisation has weights to quantise (the TFLite
# converter leaves tensors under 1024 elements in float32).
WIDE = Architecture((8, 8, 1), 10, (Block(16, pooling="sum", padding="same"),
                                    Block(32, pooling="sum", padding="valid")),
                    Head("flatten", 64))


def _trained(arch: Architecture, data, epochs: int, learning_rate: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(arch), learning_rate=learning_rate)
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig("digits"), 0)


@pytest.fixture(scope="module")
def small_model(digits) -> keras.Model:
    """SMALL trained 3 epochs: confident enough that a wrong export shows."""
    return _trained(SMALL, digits, epochs=3, learning_rate=1e-2)


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory) -> dict[str, Path]:
    """SMALL in every format, one folder per format."""
    root = tmp_path_factory.mktemp("exported")
    paths = {}
    for fmt in FORMATS:
        (root / fmt).mkdir()
        paths[fmt] = export_model(small_model, fmt, root / fmt)
    return paths


@pytest.fixture(scope="module")
def random_input() -> np.ndarray:
    return np.random.default_rng(0).random((16, 8, 8, 1), dtype="float32")


def test_every_format_is_written_under_its_file_name(exported):
    for fmt, path in exported.items():
        assert path.name == FILENAMES[fmt]
        assert path.exists()
    assert exported["saved_model"].is_dir()
    assert (exported["saved_model"] / "saved_model.pb").is_file()
    assert not (exported["tflite"].parent / ".tflite_source").exists()  # scratch removed
    assert missing_packages("keras") == []
    assert all(missing_packages(fmt) == [] for fmt in FORMATS)  # cnnsearch[export] installed


# A fresh process that cannot import cnnsearch: first only keras (safe mode, the default),
# as a consumer of the .keras file would; then each other runtime on its own artifact.
RELOAD = """
    import json
    import numpy as np
    x = np.load(sys.argv[1])
    keras_file, saved_model, onnx_file, tflite_file, out = sys.argv[2:]

    import keras
    model = keras.saving.load_model(keras_file)  # safe_mode=True is the default
    explicit = keras.saving.load_model(keras_file, safe_mode=True)
    np.save(f"{out}/keras.npy", explicit.predict(x, verbose=0))
    np.save(f"{out}/keras_default.npy", model.predict(x, verbose=0))
    ours = sorted(m for m in sys.modules if m.split(".")[0] == "cnnsearch")
    runtimes = sorted(m for m in ("onnx", "onnxruntime", "tf2onnx") if m in sys.modules)
    report = {"layers": [type(layer).__name__ for layer in model.layers],
              "ours": ours, "runtimes": runtimes}

    import tensorflow as tf
    loaded = tf.saved_model.load(saved_model)
    np.save(f"{out}/saved_model.npy", loaded.serve(tf.constant(x)).numpy())

    import onnxruntime as ort
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    np.save(f"{out}/onnx.npy", session.run(None, {"image": x})[0])

    interpreter = tf.lite.Interpreter(model_path=tflite_file)
    source, = interpreter.get_input_details()
    target, = interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    np.save(f"{out}/tflite.npy", interpreter.get_tensor(target["index"]))
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def reloaded(exported, random_input, tmp_path_factory) -> tuple[Path, dict]:
    """Run RELOAD once: (folder of <format>.npy predictions, report of the keras phase)."""
    out = tmp_path_factory.mktemp("reloaded")
    np.save(out / "x.npy", random_input)
    args = [str(exported[fmt]) for fmt in FORMATS]
    done = run_without_cnnsearch(RELOAD, out / "x.npy", *args, out, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def test_every_format_reloads_in_a_fresh_process_and_matches(reloaded, small_model,
                                                             random_input):
    """Each artifact loaded only by its own runtime, in a process that never saw the model."""
    out, _ = reloaded
    reference = small_model.predict(random_input, verbose=0)
    assert reference.max() > 0.3  # a trained, non-uniform model: a wrong export cannot hide
    for fmt in FORMATS:
        predicted = np.load(out / f"{fmt}.npy")
        assert predicted.shape == reference.shape, fmt
        assert np.max(np.abs(predicted - reference)) <= 1e-4, fmt


def test_keras_file_loads_with_only_keras_in_safe_mode(reloaded, small_model, random_input):
    """A consumer needs keras alone: not cnnsearch, no Lambda."""
    out, report = reloaded
    assert report["ours"] == []
    assert report["runtimes"] == []
    assert report["layers"].count("Sequential") == 2   # the two sum-pooling blocks
    assert "Lambda" not in report["layers"]
    reference = small_model.predict(random_input, verbose=0)
    assert np.max(np.abs(np.load(out / "keras_default.npy") - reference)) <= 1e-4


def test_keras_file_has_no_lambda_layer(exported):
    model = keras.saving.load_model(exported["keras"], safe_mode=True)
    classes = [type(layer) for layer in model.layers]
    assert keras.layers.Lambda not in classes
    assert classes.count(keras.Sequential) == 2
    with zipfile.ZipFile(exported["keras"]) as archive:
        config = archive.read("config.json").decode()
    assert "Lambda" not in config
    assert "cnnsearch" not in config


def test_saved_model_serves_an_input_named_image(exported, small_model, random_input):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported["saved_model"]))
    assert {"serve", "serving_default"} <= set(loaded.signatures)
    args, kwargs = loaded.signatures["serving_default"].structured_input_signature
    assert args == ()
    assert list(kwargs) == ["image"]
    assert kwargs["image"].shape.as_list() == [None, 8, 8, 1]
    assert kwargs["image"].dtype == tf.float32
    outputs = loaded.signatures["serving_default"](image=tf.constant(random_input))
    (predicted,) = outputs.values()
    reference = small_model.predict(random_input, verbose=0)
    assert np.max(np.abs(predicted.numpy() - reference)) <= 1e-4


@pytest.mark.parametrize("opset", [13, 17])
def test_onnx_uses_standard_ops_at_the_requested_opset(small_model, random_input, tmp_path,
                                                       opset):
    import onnx

    path = export_model(small_model, "onnx", tmp_path, opset=opset)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    versions = {entry.domain: entry.version for entry in graph.opset_import}
    assert versions.get("", versions.get("ai.onnx")) == opset
    assert [tensor.name for tensor in graph.graph.input] == ["image"]
    ops = {node.op_type for node in graph.graph.node}
    assert "Conv" in ops and not ops & {"PyFunc", "Lambda"}
    predicted = predict_with_runtime("onnx", path, random_input)
    reference = small_model.predict(random_input, verbose=0)
    assert np.max(np.abs(predicted - reference)) <= 1e-4


def test_a_model_never_called_exports_to_onnx(tmp_path, random_input):
    """A freshly built (or freshly loaded) model has never been called: Keras alone refuses."""
    model = build_model(SMALL)
    path = export_model(model, "onnx", tmp_path)
    predicted = predict_with_runtime("onnx", path, random_input)
    assert parity(model.predict(random_input, verbose=0), predicted)["parity_ok"]


def test_a_corrupted_onnx_weight_fails_the_parity_check(exported, small_model, random_input,
                                                        tmp_path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(exported["onnx"])
    floats = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    largest = max(floats, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(largest)
    noise = np.random.default_rng(1).normal(0.0, 1.0, weights.shape).astype(weights.dtype)
    largest.CopyFrom(numpy_helper.from_array(weights + noise, largest.name))
    corrupted = tmp_path / "model.onnx"
    onnx.save(graph, corrupted)

    reference = small_model.predict(random_input, verbose=0)
    intact = parity(reference, predict_with_runtime("onnx", exported["onnx"], random_input))
    broken = parity(reference, predict_with_runtime("onnx", corrupted, random_input))
    assert intact["parity_ok"]
    assert not broken["parity_ok"]
    assert broken["max_abs_diff"] > FLOAT_TOLERANCE


@pytest.fixture(scope="module")
def wide_model(digits) -> keras.Model:
    """WIDE trained 5 epochs (about 90% test accuracy)."""
    return _trained(WIDE, digits, epochs=5, learning_rate=3e-3)


@pytest.fixture(scope="module")
def wide_plain(wide_model, tmp_path_factory) -> Path:
    """WIDE as a float32 .tflite, the size to beat."""
    return export_model(wide_model, "tflite", tmp_path_factory.mktemp("float"))


@pytest.mark.parametrize(("quantize", "dtype"), [("float16", "float16"), ("dynamic", "int8")])
def test_quantized_tflite_keeps_the_top1_class(wide_model, wide_plain, digits, tmp_path,
                                               quantize, dtype):
    import tensorflow as tf

    sample = digits.x_test[:200]
    reference = wide_model.predict(sample, verbose=0)
    path = export_model(wide_model, "tflite", tmp_path, quantize=quantize)

    record = parity(reference, predict_with_runtime("tflite", path, sample), quantize)
    assert record["parity_ok"], record
    assert record["top1_agreement"] >= QUANTIZED_AGREEMENT
    assert record["max_abs_diff"] > 1e-6  # the weights really were quantised ...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        tensors = tf.lite.Interpreter(model_path=str(path)).get_tensor_details()
    assert dtype in {np.dtype(t["dtype"]).name for t in tensors}
    assert path.stat().st_size < wide_plain.stat().st_size  # ... and the file is smaller
    assert not (tmp_path / ".tflite_source").exists()


def test_unknown_format_or_quantisation_is_refused(small_model, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(small_model, "pdf", tmp_path)
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_model(small_model, "tflite", tmp_path, quantize="int3")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="format must be one of"):
        predict_with_runtime("pdf", tmp_path / "model.pdf", np.zeros((1, 8, 8, 1)))
