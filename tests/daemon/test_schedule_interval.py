"""popvault.daemon.interval: a schedule's longest gap between runs, for the no-success alert."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.config import Schedule, crontab_fields
from popvault.daemon.interval import (
    CRON_HORIZON,
    CRON_SAMPLE_STEP,
    longest_cron_gap,
    schedule_interval,
)

START = datetime(2026, 12, 4, 1, 7, 32).astimezone()  # a Friday, not on a whole hour


def every_tick(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """Every tick of the line from ``start`` to ``end`` (for sparse lines only), one by one."""
    trigger = CronTrigger(**crontab_fields(cron))
    ticks: list[datetime] = []
    at = trigger.get_next_fire_time(None, start)
    while at is not None and at <= end:
        ticks.append(at)
        at = trigger.get_next_fire_time(None, at + timedelta(seconds=1))
    return ticks


def gaps(ticks: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]


def numbers(values: set[int]) -> str:
    return ",".join(str(value) for value in sorted(values))


# Sparse crontab lines: one minute of some hours (8 or more: the first ticks then cover a few
# days only, and the long gaps are the samples' to find) of some weekdays.
sparse_lines = st.builds(
    lambda minute, hours, days: f"{minute} {numbers(hours)} * * {numbers(days)}",
    st.integers(0, 59),
    st.sets(st.integers(0, 23), min_size=8),
    st.sets(st.integers(0, 6), min_size=1),
)


@settings(max_examples=40, deadline=None)
@given(sparse_lines)
def test_a_cron_lines_interval_is_its_longest_gap_seen_at_most_an_hour_short(cron: str) -> None:
    found = longest_cron_gap(cron, START)
    end = START + CRON_HORIZON
    # Every gap wholly inside the horizon is seen, at most one sample step short...
    inside = gaps(every_tick(cron, START, end))
    assert found >= max(inside, default=0.0) - CRON_SAMPLE_STEP.total_seconds()
    # ...and nothing longer than a real gap of the line is reported (one may reach past
    # the horizon's ends: the ticks a horizon before and after are counted too).
    around = gaps(every_tick(cron, START - CRON_HORIZON, end + CRON_HORIZON))
    assert found <= max(around)


@given(st.sampled_from([1, 2, 3, 5, 10, 15, 20, 30]), st.sampled_from(["*", "1-5", "0,6"]))
@settings(max_examples=20, deadline=None)
def test_a_frequent_line_without_pauses_is_measured_exactly(step: int, days: str) -> None:
    every_day = days == "*"
    found = longest_cron_gap(f"*/{step} * * * {days}", START)
    if every_day:
        assert found == step * 60
    else:  # the days off are the longest gap: at least a day and a step
        assert found >= 86400 + step * 60 - CRON_SAMPLE_STEP.total_seconds()


def test_a_weekday_line_is_measured_across_the_weekend() -> None:
    # Friday 9:00 to Monday 9:00: an alert counted from one day would fire every Monday.
    assert longest_cron_gap("0 9 * * 1-5", START) == 72 * 3600


@given(st.floats(1.0, 366 * 86400.0))
def test_an_every_schedules_interval_is_its_every(every: float) -> None:
    assert schedule_interval(Schedule(every=every)) == every


def test_a_cron_schedules_interval_is_its_lines_gap() -> None:
    assert schedule_interval(Schedule(every=None, cron="*/15 * * * *")) == 900.0
