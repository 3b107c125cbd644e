"""Where cnnsearch writes: progress and logs to stderr, tables to stdout."""

from __future__ import annotations

import logging
import sys

from rich.console import Console

console = Console(stderr=True)
report = Console(width=None if Console().is_terminal else 200)   # tables on stdout


def configure_logging() -> None:
    """Console logging of every cnnsearch process (rich in a terminal, plain lines else)."""
    from rich.logging import RichHandler

    handler = (RichHandler(console=console, show_path=False) if console.is_terminal
               else logging.StreamHandler(sys.stderr))
    if not console.is_terminal:
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("absl", "tensorflow", "tf2onnx", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
