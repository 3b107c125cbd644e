"""What a sweep ran on (backend, versions, device, git commit), as run tags.

Read in the sweep's own process, where Keras runs and sees the devices; the MLflow
recorder may live in another process (``tracking.recorder_process``).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def environment_tags() -> dict[str, str]:
    """Backend, versions, device and git commit, for reproducing a sweep later."""
    import keras
    import keras_tuner

    tags = {
        "cnnsearch.keras_backend": keras.backend.backend(),
        "cnnsearch.keras_version": keras.__version__,
        "cnnsearch.keras_tuner_version": keras_tuner.__version__,
        "cnnsearch.python": platform.python_version(),
        "cnnsearch.device": _devices(),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tags["cnnsearch.tensorflow_version"] = tf.__version__
    commit = _git_commit()
    if commit:   # the UI hides mlflow.* tags: the commit is shown under our name too
        tags["mlflow.source.git.commit"] = tags["cnnsearch.git_commit"] = commit
    return tags


def _devices() -> str:
    import keras

    try:
        gpus = [d for d in keras.distribution.list_devices() if "gpu" in d.lower()]
    except (RuntimeError, ValueError):
        gpus = []
    return ", ".join(gpus) if gpus else f"CPU ({platform.processor() or platform.machine()})"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None
