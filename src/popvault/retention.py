"""When a server copy may be deleted: the retention policy as pure functions.

No I/O here; :mod:`popvault.sync` asks these questions and does the deleting,
and :mod:`popvault.status` uses the same answers to show what is due.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from popvault.config import Retention


def is_due(policy: Retention, archived_at: datetime, session_start: datetime) -> bool:
    """Whether a message archived at ``archived_at`` may be deleted in a session started then.

    ``keep`` never deletes. ``delete`` deletes in the same session that
    archived the message (its archived_at is later than the session's start).
    A duration deletes in the first session that *starts* at least that long
    after the message was archived — so a message is never deleted early
    because a long session happened to be running when its time came.
    """
    if policy.mode == "keep":
        return False
    if policy.mode == "delete":
        return True
    assert policy.after is not None  # noqa: S101 - Retention.__post_init__ guarantees it
    return archived_at + policy.after <= session_start


def due_cutoff(policy: Retention, now: datetime) -> datetime | None:
    """The latest archived_at that is due at ``now`` (None: nothing is ever due)."""
    if policy.mode == "keep":
        return None
    if policy.mode == "delete":
        return now
    assert policy.after is not None  # noqa: S101 - Retention.__post_init__ guarantees it
    return now - policy.after


def next_due(policy: Retention, next_archived_at: datetime | None) -> datetime | None:
    """When the oldest not-yet-due message becomes due, from its archived_at."""
    if next_archived_at is None or policy.after is None:
        return None
    return next_archived_at + policy.after


def describe(policy: Retention) -> str:
    """``keep``, ``delete``, or ``after 14d`` — for summaries.

    The duration as the config wrote it (``retention = "14d"`` is ``after 14d``,
    never ``after 2w``); a policy built in code is shown in days at most.
    """
    if policy.after is None:
        return policy.mode
    return f"after {policy.written or _duration(policy.after)}"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    # No weeks: "14d" reads as the "leave on the server for N days" it usually is.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
