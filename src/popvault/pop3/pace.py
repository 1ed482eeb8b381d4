"""Deadlines, not only timeouts: how long a phase of a session may take (pure; no clock).

A read timeout bounds one wait for data, not a session: a server that sends a
line every 2 s never trips a 3 s timeout and can keep a run alive for ever
(and a greeting sent one octet every 2 s would take hours to reach the status
line's cap). So the client also holds

* a **deadline per phase** (greeting and login; the whole session), and
* a **minimum rate** for every multi-line reply (a message, a listing),
  averaged over a window: a 100 MB message over a slow but steady link is
  fine, a server that drips a line every few seconds is not.

Both are checked with times the caller passes in (seconds from a monotonic
clock), so this module reads no clock and is tested without waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

#: 1 KiB/s averaged over 60 s: slower than any working link (a 56k modem moves
#: 7 KiB/s), faster than a server dripping a line every few seconds.
DEFAULT_MIN_RATE: Final = 1024
DEFAULT_RATE_WINDOW: Final = 60.0
#: Connect, TLS, greeting, CAPA, STLS and login take a few round trips: two
#: minutes is generous on any link and short enough to notice a stuck server.
DEFAULT_LOGIN_DEADLINE: Final = 120.0
#: A first archive of a large mailbox over a slow link takes hours; a session
#: that is still going after a day is stuck, whatever its rate.
DEFAULT_SESSION_DEADLINE: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a session and its phases may take; see the module docstring."""

    login: float = DEFAULT_LOGIN_DEADLINE
    session: float = DEFAULT_SESSION_DEADLINE
    min_rate: int = DEFAULT_MIN_RATE
    rate_window: float = DEFAULT_RATE_WINDOW


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in (monotonic) time by which ``what`` must be done."""

    what: str
    at: float
    seconds: float

    @classmethod
    def after(cls, what: str, seconds: float, now: float) -> Deadline:
        """The deadline ``seconds`` from ``now``."""
        return cls(what, now + seconds, seconds)

    def left(self, now: float) -> float:
        """Seconds left (0 or less: passed)."""
        return self.at - now

    def describe(self) -> str:
        """What passed, for an error message."""
        return f"{self.what} took longer than {self.seconds:g}s"


class SlowTransfer(Exception):
    """A multi-line reply arrived slower than the minimum rate over the window."""


class RateWatch:
    """Whether a transfer keeps at least ``min_rate`` octets/s over any ``window`` seconds.

    ``add(octets, now)`` after each read; it raises :class:`SlowTransfer`
    once a whole window has passed with fewer than ``min_rate * window``
    octets in its last ``window`` seconds. Memory is bounded: at most one
    checkpoint per tenth of the window is kept.
    """

    def __init__(self, what: str, min_rate: int, window: float, now: float) -> None:
        if min_rate < 0 or window <= 0:
            raise ValueError("min_rate must not be negative and window must be positive")
        self._what = what
        self._min_rate = min_rate
        self._window = window
        self._start = now
        self._total = 0
        # (time, octets received by then), oldest first; the first is at or
        # before now - window once a window has passed.
        self._marks: deque[tuple[float, int]] = deque([(now, 0)])

    @property
    def total(self) -> int:
        """Octets received so far."""
        return self._total

    def add(self, octets: int, now: float) -> None:
        """Count ``octets`` received at ``now``; raise SlowTransfer if too slow."""
        self._total += octets
        if now - self._marks[-1][0] >= self._window / 10:
            self._marks.append((now, self._total))
        self.check(now)

    def check(self, now: float) -> None:
        """Raise SlowTransfer if the last full window was below the minimum rate."""
        if now - self._start < self._window:
            return
        while len(self._marks) > 1 and self._marks[1][0] <= now - self._window:
            self._marks.popleft()
        since, base = self._marks[0]
        received = self._total - base
        needed = self._min_rate * (now - since)
        if received < needed:
            raise SlowTransfer(
                f"{self._what} was too slow: {received} octets in the last "
                f"{now - since:.0f}s (at least {self._min_rate} octets/s needed)"
            )
