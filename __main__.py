"""``python -m cnnsearch``: the same as the ``cnnsearch`` console script."""

import sys

from cnnsearch.search.app.cli import main

if __name__ == "__main__":   # not when a spawned child (the MLflow recorder) imports it
    sys.exit(main())
