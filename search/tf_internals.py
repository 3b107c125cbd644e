"""The only place that touches TensorFlow's private API (only where TensorFlow is the
Keras backend and already loaded: search/ never imports it)."""

from __future__ import annotations

import sys


def custom_gradients() -> set[str]:
    """Names in TensorFlow's gradient registry made by ``tf.custom_gradient``."""
    registry = _gradient_registry()
    return {name for name in registry if name.startswith("CustomGradient-")}


def forget_custom_gradients(keep: set[str]) -> None:
    """Unregister the custom gradients a finished trial's training traced.

    Keras 3's TensorFlow optimizer registers a ``tf.custom_gradient`` (an all-reduce)
    in TensorFlow's global registry at every trace of a train step, and nothing ever
    unregisters it: each trial's whole train graph stays reachable, ~10 MB a trial
    (tensorflow/tensorflow#80895, keras-team/keras#20245). The trial's model is
    gone after the trial, so its entries are dead weight.
    """
    registry = _gradient_registry()
    for name in custom_gradients() - keep:
        del registry[name]


def _gradient_registry() -> dict:
    # Only where TensorFlow is already loaded (its backend): search/ never imports it.
    ops = sys.modules.get("tensorflow.python.framework.ops")
    return getattr(getattr(ops, "_gradient_registry", None), "_registry", {})
