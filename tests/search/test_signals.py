"""SIGTERM and Ctrl-C during a command: the first stops it; a second one waits while the
first is handled (the runs are being closed) and is raised again if the first was lost."""

from __future__ import annotations

import signal

import pytest

from cnnsearch.search.app.commands import _sigterm_as_interrupt


def _signal_self(signum: int = signal.SIGTERM) -> None:
    signal.raise_signal(signum)   # its Python handler runs before this returns


def test_sigterm_raises_keyboard_interrupt_and_is_recorded():
    with pytest.raises(KeyboardInterrupt, match="signal 15"), \
            _sigterm_as_interrupt() as received:
        _signal_self()
    assert received.signum == signal.SIGTERM


def test_a_second_signal_does_not_cut_short_the_handling_of_the_first():
    handled = []
    with _sigterm_as_interrupt():
        try:
            _signal_self(signal.SIGINT)
        except KeyboardInterrupt:
            _signal_self()   # the chief's SIGTERM while this closes its runs
            handled.append("runs closed")
    assert handled == ["runs closed"]


def test_a_second_signal_is_raised_again_when_the_first_was_lost():
    with _sigterm_as_interrupt() as received:
        try:   # as in a finalizer: Python prints "Exception ignored" and goes on
            _signal_self(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            _signal_self()   # stuck afterwards (a call to a chief that is gone)
    assert received.signum == signal.SIGTERM


def test_a_lost_signal_is_raised_again_at_the_next_sweep_event():
    with _sigterm_as_interrupt() as received:
        try:
            _signal_self()
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            received.epoch_ended("0", 0, {})


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _sigterm_as_interrupt():
        pass
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
