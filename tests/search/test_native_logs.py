"""TensorFlow's C++ log lines are kept off stderr; everything else written there stays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnnsearch.models.native_logs import native_logs_hidden

NATIVE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796117899.010252   23106 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1796117901.807575   23106 cuda_platform.cc:52] failed call to cuInit: "
    "UNKNOWN ERROR (303)\n"
    "W0000 00:00:1796118004.718465   23808 tf_tfl_flatbuffer_helpers.cc:364] Ignored.\n"
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
)
OURS = "UserWarning: something a user should read\n[09:38:21 INFO] data=digits: train\n"


def _write_both() -> None:
    os.write(2, (NATIVE + OURS).encode())   # at the descriptor, as C++ code writes


def test_native_lines_are_dropped_and_the_rest_written_back(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with native_logs_hidden():
        _write_both()
    err = capfd.readouterr().err
    assert err == OURS


@pytest.mark.parametrize("level", ["0", "1"])
def test_tf_cpp_min_log_level_0_or_1_shows_them(capfd, monkeypatch, level):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with native_logs_hidden():
        _write_both()
    assert capfd.readouterr().err == NATIVE + OURS


def test_what_was_written_survives_an_error_in_the_block(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with pytest.raises(RuntimeError, match="boom"), native_logs_hidden():
        _write_both()
        raise RuntimeError("boom")
    assert capfd.readouterr().err == OURS
    os.write(2, b"after\n")   # descriptor 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"


def test_starting_keras_prints_no_native_line():
    code = ("from cnnsearch.models.native_logs import start_keras; start_keras(); "
            "import sys; print('ready', file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "ready\n"
