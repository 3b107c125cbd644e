"""cnnsearch: search convolutional network architectures with Keras, keras-tuner, Hydra and MLflow.

The repository root is this package (see ``[tool.setuptools]`` in pyproject.toml):
``cnnsearch.models`` (pure model code), ``cnnsearch.search`` (the search and the CLI),
``cnnsearch.tracking`` (MLflow), and the Hydra config tree ``conf/`` as package data.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnsearch")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "unknown"
