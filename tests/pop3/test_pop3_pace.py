"""popvault.pop3.pace: phase deadlines and the minimum rate, with the clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.config import _model
from popvault.pop3.pace import Deadline, Limits, RateWatch, SlowTransfer


def test_a_deadline_counts_down_and_says_what_passed() -> None:
    deadline = Deadline.after("the greeting and login", 120, now=1000.0)
    assert deadline.left(1000.0) == 120
    assert deadline.left(1130.0) == -10
    assert deadline.describe() == "the greeting and login took longer than 120s"


def test_a_steady_slow_link_is_fine() -> None:
    watch = RateWatch("RETR 1", min_rate=1024, window=60, now=0.0)
    for second in range(1, 3600):  # an hour at 2 KiB/s: a 7 MB message over a bad link
        watch.add(2048, now=float(second))
    assert watch.total == 2048 * 3599


def stopped_at(watch: RateWatch, steps: list[tuple[float, int]]) -> float | None:
    """Feed (time, octets) steps; the time at which the watch raised, or None."""
    for now, octets in steps:
        try:
            watch.add(octets, now=now)
        except SlowTransfer:
            return now
    return None


def test_a_server_dripping_a_line_every_two_seconds_is_stopped_after_the_window() -> None:
    watch = RateWatch("the reply to UIDL", min_rate=1024, window=60, now=0.0)
    drip = [(2.0 * tick, 40) for tick in range(1, 100)]
    assert stopped_at(watch, drip) == 60.0
    with pytest.raises(SlowTransfer, match="the reply to UIDL was too slow") as info:
        watch.check(now=62.0)
    assert "at least 1024 octets/s" in str(info.value)


def test_nothing_is_judged_before_a_whole_window() -> None:
    watch = RateWatch("RETR 2", min_rate=1024, window=60, now=0.0)
    assert stopped_at(watch, [(59.0, 1), (61.0, 1)]) == 61.0


def test_a_burst_then_a_trickle_is_judged_on_the_last_window() -> None:
    watch = RateWatch("RETR 3", min_rate=100, window=10, now=0.0)
    # A fast start, then 10 octets/s: caught one window after the burst.
    steps = [(1.0, 100_000)] + [(float(second), 10) for second in range(2, 30)]
    assert stopped_at(watch, steps) == 11.0


@given(st.lists(st.integers(min_value=100, max_value=10_000), min_size=1, max_size=300))
def test_any_rate_at_or_above_the_minimum_passes(octets_per_second: list[int]) -> None:
    watch = RateWatch("RETR 4", min_rate=100, window=10, now=0.0)
    for second, octets in enumerate(octets_per_second, start=1):
        watch.add(octets, now=float(second))


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        RateWatch("x", min_rate=1, window=0, now=0.0)


def test_the_config_defaults_are_the_pace_defaults() -> None:
    # config restates them (it imports nothing of pop3); this keeps the two in step.
    limits = Limits()
    assert (limits.login, limits.session, limits.min_rate, limits.rate_window) == (
        _model.DEFAULT_LOGIN_TIMEOUT,
        _model.DEFAULT_SESSION_TIMEOUT,
        _model.DEFAULT_MIN_RATE,
        _model.DEFAULT_RATE_WINDOW,
    )
