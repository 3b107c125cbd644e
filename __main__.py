"""``python -m cnnsearch``: the same as the ``cnnsearch`` console script."""

import sys

from cnnsearch.search.cli import main

sys.exit(main())
