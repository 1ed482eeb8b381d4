"""How long an account's schedule may leave between two runs: what the alerts measure against.

``popvault_account_interval_seconds`` exports it, and the shipped alert
``PopvaultAccountNoRecentSuccess`` (``popvault/contrib/alerts.yml``) fires
when an account has gone several such intervals without a success. An
``every`` schedule's interval is its ``every``. A ``cron`` line's ticks need
not be evenly spaced (``0 9 * * 1-5`` leaves three days over a weekend), so
its interval is the longest gap between two of its ticks: an alert counted
from the shortest gap would fire every Monday.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Final

from popvault.config import Schedule, crontab_fields

# A week shows every pattern a crontab line can have (its fields repeat by day
# of week, day of month and month; the longest day-of-week gap is under a week);
# a day more sees the gap that straddles the window's end. Day-of-month lines
# (``0 3 1 * *``) have gaps longer than this: they are seen as at least 8 days,
# which is still a long threshold.
CRON_HORIZON: Final = timedelta(days=8)
# The long gaps are found by asking for the next tick after each hour of the
# horizon (192 look-ups, not one per tick: ``* * * * *`` has 11,520 ticks in
# 8 days), which may see a gap up to an hour short; the first ticks, one after
# the other, measure the short gaps of a frequent line exactly.
CRON_SAMPLE_STEP: Final = timedelta(hours=1)
CRON_FIRST_TICKS: Final = 48


def schedule_interval(schedule: Schedule) -> float:
    """Seconds between two of the schedule's runs at most (for a cron line, from now)."""
    if schedule.cron is None:
        return schedule.every or 0.0
    return _cached_cron_interval(schedule.cron)


@functools.lru_cache(maxsize=256)
def _cached_cron_interval(cron: str) -> float:
    # Thousands of accounts share a few lines ([defaults]): one computation per line.
    return longest_cron_gap(cron, datetime.now().astimezone())


def longest_cron_gap(cron: str, start: datetime) -> float:
    """The longest gap in seconds between two ticks of ``cron`` within CRON_HORIZON of ``start``.

    Exact for gaps up to an hour; a longer gap may be seen up to an hour
    short (see CRON_SAMPLE_STEP). ``start`` must be timezone-aware; the line
    is read in the machine's local time, as the daemon reads it.
    """
    # Imported here: only a daemon with a crontab schedule pays for APScheduler.
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415

    trigger = CronTrigger(**crontab_fields(cron))
    end = start + CRON_HORIZON

    def next_after(at: datetime) -> datetime | None:
        found: datetime | None = trigger.get_next_fire_time(None, at)
        return found

    longest = 0.0
    tick = next_after(start)
    for _ in range(CRON_FIRST_TICKS):
        if tick is None or tick > end:
            break
        following = next_after(tick + timedelta(seconds=1))  # strictly after this tick
        if following is None:
            break
        longest = max(longest, (following - tick).total_seconds())
        tick = following
    at = start
    while at < end:
        found = next_after(at)
        if found is None:
            break
        longest = max(longest, (found - at).total_seconds())
        at += CRON_SAMPLE_STEP
    return longest
