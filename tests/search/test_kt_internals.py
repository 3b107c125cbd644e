"""search.kt_internals: the one module on keras-tuner's private API refuses untested versions
and recognises keras-tuner's failure stop."""

from __future__ import annotations

import keras_tuner as kt
import pytest

from cnnsearch.search.errors import UserError
from cnnsearch.search.kt_internals import TESTED_VERSIONS, check_version, failure_stop_reason
from cnnsearch.search.sweep import validate


def test_the_installed_keras_tuner_is_a_tested_one():
    assert kt.__version__ in TESTED_VERSIONS
    check_version()


def test_an_untested_keras_tuner_is_refused_before_any_work(monkeypatch, make_spec, tmp_path):
    monkeypatch.setattr(kt, "__version__", "9.0.0")
    with pytest.raises(UserError) as info:
        validate(make_spec())
    message = str(info.value)
    assert "keras-tuner 9.0.0 is not supported" in message
    assert f"pip install 'keras-tuner=={TESTED_VERSIONS[-1]}'" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_failure_stop_reason_reads_keras_tuners_stop_and_nothing_else():
    stop = RuntimeError("Number of consecutive failures exceeded the limit of 3.\n"
                        "Traceback (most recent call last):\n  ...\n"
                        "ValueError: loss became NaN at epoch 0\n")
    assert failure_stop_reason(stop) == ("Number of consecutive failures exceeded the limit "
                                         "of 3. Last reason: ValueError: loss became NaN at "
                                         "epoch 0")
    assert failure_stop_reason(RuntimeError("CUDA out of memory")) is None
    assert failure_stop_reason(ValueError("consecutive failures")) is None
