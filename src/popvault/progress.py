"""The progress bar of ``popvault run`` on a terminal.

Its own module, imported only when standard error is a terminal: a run from
cron or systemd never loads it.
"""

from __future__ import annotations

import sys

from popvault.humanize import human_size


class TerminalProgress:
    """A one-line progress bar on standard error, redrawn in place."""

    def __init__(self) -> None:
        self._account = ""
        self._total_messages = 0
        self._total_octets = 0
        self._done_messages = 0
        self._done_octets = 0

    def planned(self, account: str, messages: int, octets: int) -> None:
        self._account = account
        self._total_messages, self._total_octets = messages, octets
        self._done_messages = self._done_octets = 0
        self._draw()

    def fetched(self, account: str, octets: int) -> None:
        self._done_messages += 1
        self._done_octets += octets
        self._draw()

    def _draw(self) -> None:
        width = 30
        share = self._done_octets / self._total_octets if self._total_octets else 1.0
        filled = min(width, int(share * width))
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(
            f"\r{self._account}: [{bar}] {self._done_messages}/{self._total_messages} "
            f"{human_size(self._done_octets)}\x1b[K"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
