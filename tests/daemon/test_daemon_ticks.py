"""next_tick: when an account runs next on its schedule (property tests).

Interval schedules: the next tick is after now, on the interval's grid counted
from the tick that was due (give or take half the jitter), and never more than
one interval (plus half the jitter) away, so a run longer than the interval
skips the ticks it covered instead of catching up. Crontab schedules: the next
matching minute strictly after now, plus at most the cron jitter.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from popvault.config import Schedule
from popvault.daemon.core import (
    CRON_JITTER_S,
    DISPATCH_POLL_S,
    jitter_for,
    next_tick,
    tick_anchor,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@given(
    every=st.floats(min_value=1.0, max_value=7 * 86400.0),
    late=st.floats(min_value=-3600.0, max_value=30 * 86400.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_an_interval_tick_is_after_now_on_the_grid_and_within_one_interval(
    every: float, late: float, seed: int
) -> None:
    schedule = Schedule(every=every)
    due = T0
    now = T0 + timedelta(seconds=late)
    at = next_tick(schedule, due, now, random.Random(seed))
    half = timedelta(seconds=jitter_for(schedule) / 2)
    step = timedelta(seconds=every)
    assert at > now
    assert at <= now + step + half + timedelta(microseconds=2)
    # On the grid due + k * every, give or take half the jitter (a millisecond of rounding).
    offset = (at - due) % step
    assert min(offset, step - offset) <= half + timedelta(milliseconds=1)


def test_interval_ticks_keep_to_the_interval_on_average() -> None:
    schedule = Schedule(every=300.0)
    rng = random.Random(7)
    due = T0
    for _ in range(1000):
        due = next_tick(schedule, due, due + timedelta(seconds=1), rng)
    # 1000 ticks of 5 minutes: a one-sided jitter would drift by ~15 s a tick (4 hours).
    drift = abs((due - T0) - 1000 * timedelta(seconds=300))
    assert drift < timedelta(minutes=10)


@given(
    minute=st.integers(min_value=0, max_value=59),
    late=st.floats(min_value=0.0, max_value=86400.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_a_cron_tick_is_the_next_matching_minute_plus_its_jitter(
    minute: int, late: float, seed: int
) -> None:
    schedule = Schedule(every=None, cron=f"{minute} * * * *")
    now = T0 + timedelta(seconds=late)
    at = next_tick(schedule, T0, now, random.Random(seed))
    assert now < at <= now + timedelta(hours=1, seconds=1 + CRON_JITTER_S)
    base = at.astimezone().replace(second=0, microsecond=0)
    assert base.minute == minute
    assert (at - base) <= timedelta(seconds=CRON_JITTER_S)


@given(
    every=st.floats(min_value=1.0, max_value=86400.0),
    late=st.floats(min_value=0.0, max_value=7200.0),
)
def test_a_late_start_moves_the_grid_and_an_on_time_one_keeps_it(every: float, late: float) -> None:
    schedule = Schedule(every=every)
    started = T0 + timedelta(seconds=late)
    anchor = tick_anchor(schedule, T0, started)
    allowance = max(jitter_for(schedule), DISPATCH_POLL_S)
    assert anchor == (started if late > allowance else T0)


def test_accounts_due_together_and_run_one_after_another_spread_out() -> None:
    # 60 accounts due at once, run by 4 slots taking 2 s each: their next ticks
    # spread over the 30 s their runs took, instead of all falling on one instant.
    schedule = Schedule(every=60.0)
    rng = random.Random(3)
    starts = [T0 + timedelta(seconds=2 * (n // 4)) for n in range(60)]
    ticks = [
        next_tick(schedule, tick_anchor(schedule, T0, start), start + timedelta(seconds=2), rng)
        for start in starts
    ]
    assert max(ticks) - min(ticks) >= timedelta(seconds=20)
