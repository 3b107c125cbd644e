"""Keep TensorFlow's C++ log lines off the terminal unless the user asks for them.

Since TensorFlow moved to absl logging, ``TF_CPP_MIN_LOG_LEVEL`` no longer hides the
lines its libraries print while they load and start a device (``cudart_stub``,
``cuInit``, oneDNN, absl's "before InitializeLog" warning): absl writes them straight
to file descriptor 2. So the moments that print them run with that descriptor
captured, and everything captured that is not such a line is written back.
``TF_CPP_MIN_LOG_LEVEL=0`` (or 1) shows them again, as TensorFlow documents.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

SHOW_ENV = "TF_CPP_MIN_LOG_LEVEL"
NATIVE_LINE = re.compile(
    r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "        # absl / glog prefix
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|INFO: Created TensorFlow Lite"
    r"|To enable the following instructions: .* rebuild TensorFlow")  # cpu_feature_guard's 2nd line


def shown() -> bool:
    """Whether the user asked for the C++ lines (``TF_CPP_MIN_LOG_LEVEL`` 0 or 1)."""
    return os.environ.get(SHOW_ENV, "").strip() in ("0", "1")


@contextmanager
def native_logs_hidden() -> Iterator[None]:
    """Run the block with stderr captured at the descriptor; write back all but C++ logs."""
    if shown():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stderr.writelines(line for line in text.splitlines(keepends=True)
                                  if not NATIVE_LINE.match(line))
            sys.stderr.flush()


def start_keras() -> None:
    """Import Keras and start its backend's devices quietly (the lines come from both)."""
    with native_logs_hidden():
        import keras

        keras.ops.zeros(())
