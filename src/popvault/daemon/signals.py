"""Signals, turned into requests the daemon's main loop acts on.

The handlers only set flags (they run between two bytecodes of the main
thread, which may hold any lock); the one exception is a second SIGTERM or
SIGINT, which ends the process at once with :func:`os._exit`: every write
popvault makes is crash-safe, so nothing is lost, and nothing may block it.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class SignalRequests:
    """SIGTERM/SIGINT ask to stop (twice: exit now), SIGHUP asks to reload."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.stop_requested = False
        self._reload = False

    def install(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP (from the main thread)."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or ``timeout`` seconds pass."""
        self._event.wait(timeout)
        self._event.clear()

    def take_reload(self) -> bool:
        """True once per SIGHUP received (several before a look count once)."""
        wanted, self._reload = self._reload, False
        return wanted

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            # Not logging: the logging module's locks may be held by this very thread.
            os.write(2, b"popvault: second signal: exiting now\n")
            os._exit(128 + signum)
        self.stop_requested = True
        self._event.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True
        self._event.set()
