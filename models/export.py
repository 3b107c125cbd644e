"""Write a Keras model in a deployment format and run it back with that format's runtime.

Formats: ``keras`` (native ``.keras``), ``saved_model`` (TensorFlow SavedModel for TF
Serving, a ``serve`` signature with the input named ``image``), ``onnx`` (standard ops
only: sum pooling lowers to ``Conv``) and ``tflite`` (LiteRT, optionally quantised).
Each runtime is imported only when its format is used.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np

FORMATS = ("keras", "saved_model", "onnx", "tflite")
QUANTIZE = ("none", "float16", "dynamic")
FILENAMES = {"keras": "model.keras", "saved_model": "saved_model", "onnx": "model.onnx",
             "tflite": "model.tflite"}
_NEEDS = {"saved_model": ("tensorflow",), "onnx": ("tensorflow", "onnx", "tf2onnx", "onnxruntime"),
          "tflite": ("tensorflow",)}


def missing_packages(fmt: str) -> list[str]:
    """Python packages a format needs that are not installed."""
    return [name for name in _NEEDS.get(fmt, ()) if importlib.util.find_spec(name) is None]


def onnx_opsets() -> range:
    """The ONNX opsets the installed converter (tf2onnx) can write: 7 up to its newest."""
    from tf2onnx import constants

    return range(7, max(constants.OPSET_TO_IR_VERSION) + 1)


def export_model(model: keras.Model, fmt: str, directory: Path, opset: int = 17,
                 quantize: str = "none") -> Path:
    """Write ``model`` in format ``fmt`` inside ``directory``.

    Args:
        model: a built Keras model.
        fmt: one of ``FORMATS``.
        directory: an existing folder.
        opset: ONNX opset version.
        quantize: ``tflite`` only: ``none``, ``float16`` or ``dynamic`` (range).

    Returns:
        The written file or folder.

    Raises:
        ValueError: an unknown format or quantisation.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    path = Path(directory) / FILENAMES[fmt]
    if fmt == "keras":
        model.save(path)
    elif fmt == "saved_model":
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif fmt == "onnx":
        # Keras refuses an ONNX export of a model that was never called (a freshly
        # built or loaded one); one call on a zero batch is enough.
        model(np.zeros((1, *model.input_shape[1:]), dtype="float32"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(path), format="onnx", opset_version=opset, verbose=False)
    else:
        path.write_bytes(_tflite_bytes(model, Path(directory), quantize))
    return path


def predict_with_runtime(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """Load an exported artifact with its own runtime and predict ``x``."""
    x = np.asarray(x, dtype="float32")
    if fmt == "keras":
        return np.asarray(keras.saving.load_model(path, compile=False).predict(x, verbose=0))
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # keep a reference: serve() uses its variables
        return loaded.serve(tf.constant(x)).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if fmt == "tflite":
        return _tflite_predict(path, x)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _tflite_bytes(model: keras.Model, scratch: Path, quantize: str) -> bytes:
    """Convert through a SavedModel, the converter's best-supported input."""
    import tensorflow as tf

    saved = scratch / ".tflite_source"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if quantize in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    content = converter.convert()
    shutil.rmtree(saved, ignore_errors=True)
    return content


def _tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    source, = interpreter.get_input_details()
    target, = interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(target["index"])
