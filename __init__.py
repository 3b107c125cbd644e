"""cnnsearch: search convolutional network architectures with Keras, keras-tuner, Hydra and MLflow.

The repository root is this package (see ``[tool.setuptools]`` in pyproject.toml):
``cnnsearch.models`` (pure model code), ``cnnsearch.search`` (the search and the CLI),
``cnnsearch.tracking`` (MLflow), and the Hydra config tree ``conf/`` as package data.

The Python API (``cnnsearch.sweep``, ``cnnsearch.results``, ``cnnsearch.export``,
``cnnsearch.compose``: see :mod:`cnnsearch.search.app.api`) loads on first use, so that
``import cnnsearch`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnsearch")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "unknown"


API = ("sweep", "results", "export", "compose")


def __getattr__(name: str):
    if name in API:
        from cnnsearch.search.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnsearch' has no attribute {name!r}")
