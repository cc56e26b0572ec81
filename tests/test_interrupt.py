"""Interruption handling around Tuner.fit, with a stand-in for Tune's SIGINT handler (the
whole path through Ray is tests/test_e2e_search.py::test_inprocess_search_resume...)."""

from __future__ import annotations

import os
import signal
import time

from hpsearch.search.tuner import _interruptible


def _tune_like_handler(events: list[str]):
    """What ray.tune.tune._setup_signal_catching installs: note the stop, put back the
    previous handler."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(sig, frame):
        events.append("tune saw SIGINT")
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)


def _wait_for(events: list[str]) -> None:
    deadline = time.time() + 5
    while not events and time.time() < deadline:
        time.sleep(0.01)


def test_sigterm_becomes_tunes_sigint_and_counts_as_interrupted():
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    events: list[str] = []
    with _interruptible() as state:
        _tune_like_handler(events)
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(events)
    assert events == ["tune saw SIGINT"] and state.seen
    assert signal.getsignal(signal.SIGINT) is before_int
    assert signal.getsignal(signal.SIGTERM) is before_term


def test_ctrl_c_counts_as_interrupted_and_a_quiet_fit_does_not():
    before_int = signal.getsignal(signal.SIGINT)
    events: list[str] = []
    with _interruptible() as state:
        _tune_like_handler(events)
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for(events)
    assert state.seen and signal.getsignal(signal.SIGINT) is before_int
    with _interruptible() as quiet:
        _tune_like_handler([])  # installed, never triggered: Tune leaves it in place
    assert not quiet.seen
    assert signal.getsignal(signal.SIGINT) is before_int  # restored anyway
