"""Crontab lines (``cron = "*/15 * * * *"``) as arguments of APScheduler 3's CronTrigger.

APScheduler 3 numbers weekdays from Monday = 0, while crontab(5) numbers them
from Sunday = 0 (and 7). ``CronTrigger.from_crontab`` keeps APScheduler's
numbering, so "1-5" would mean Tuesday to Saturday; here the weekday field is
rewritten as day names, so that it means what it means in a crontab.
"""

from __future__ import annotations

from typing import Final

# crontab(5): 0 and 7 are Sunday.
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_fields(expr: str) -> dict[str, str]:
    """``minute hour day month weekday`` as keyword arguments of ``CronTrigger``."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"needs 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return {
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "day_of_week": weekday_names(weekday),
    }


def weekday_names(field: str) -> str:
    """A crontab weekday field as a list of day names: ``"1-5"`` -> ``"mon,tue,wed,thu,fri"``."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        days |= _weekday_part(part)
    return ",".join(_DAYS[day] for day in sorted(days))


def _weekday_part(part: str) -> set[int]:
    base, slash, step_text = part.partition("/")
    step = _number(step_text, "step") if slash else 1
    if step < 1:
        raise ValueError(f"invalid weekday step in {part!r}")
    if base == "*":
        first, last = 0, 6
    elif "-" in base:
        start, _, end = base.partition("-")
        first, last = _day(start), _day(end)
    else:
        # crontab(5): "N/step" runs from N to the end of the range.
        first = _day(base)
        last = 7 if slash else first
    if first > last:
        raise ValueError(f"invalid weekday range {part!r}")
    return {day % 7 for day in range(first, last + 1, step)}


def _day(text: str) -> int:
    if text in _DAYS:
        return _DAYS.index(text)
    day = _number(text, "weekday")
    if not 0 <= day <= 7:
        raise ValueError(f"invalid weekday {text!r} (0-7 or sun-sat)")
    return day


def _number(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid {what} {text!r}")
    return int(text)
