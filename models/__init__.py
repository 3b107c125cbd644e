"""Pure model code: candidate descriptions, sum pooling, the Keras builder.

Every model built here uses built-in Keras layers only: a saved ``.keras`` file loads
with ``keras.saving.load_model(path)`` (safe mode on) where cnnsearch is not installed.

The names below load on first use, so reading an ``Architecture`` does not import Keras
(the MLflow recorder process reads them).
"""

from importlib import import_module

_MODULE_OF = {"Architecture": "architecture", "Block": "architecture", "Head": "architecture",
              "build_model": "cnn", "compile_model": "cnn", "sum_pooling_2d": "layers"}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
