"""Events the sans-IO POP3 core produces from server bytes.

Each reply to a command becomes exactly one of :class:`Ok`, :class:`Err` or
:class:`MultilineBegin` (followed by zero or more :class:`Data` chunks and one
:class:`MultilineEnd`); an AUTH exchange may add :class:`Continuation` events
before its final reply. The commands carried here print redacted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from popvault.pop3.commands import Command


class Sentinel(enum.Enum):
    """Marker values returned by :meth:`Pop3Connection.next_event`."""

    NEED_DATA = enum.auto()


#: ``next_event()`` needs more bytes from the server before it can say more.
NEED_DATA = Sentinel.NEED_DATA


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's ``+OK`` greeting; ``apop_timestamp`` is its ``<...@...>`` part, if any."""

    text: str
    apop_timestamp: str | None


@dataclass(frozen=True, slots=True)
class Ok:
    """A single-line ``+OK`` reply to ``command``."""

    command: Command
    text: str


@dataclass(frozen=True, slots=True)
class Err:
    """A ``-ERR`` reply; ``code`` is the RFC 2449 section 8 response code, upper-cased.

    ``command`` is ``None`` when the server refused the session in its greeting.
    """

    command: Command | None
    text: str
    code: str | None


@dataclass(frozen=True, slots=True)
class Continuation:
    """A ``+ challenge`` line during AUTH (RFC 5034 section 4)."""

    command: Command
    text: str


@dataclass(frozen=True, slots=True)
class MultilineBegin:
    """The ``+OK`` line of a multi-line reply; :class:`Data` chunks follow."""

    command: Command
    text: str


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a multi-line body, dot-unstuffed, line endings exactly as sent."""

    chunk: bytes

    def __repr__(self) -> str:
        # Bodies can be large and private: never put them whole into a log or a test report.
        return f"Data(<{len(self.chunk)} octets>)"


@dataclass(frozen=True, slots=True)
class MultilineEnd:
    """The terminating ``.`` line of a multi-line reply to ``command``."""

    command: Command


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the stream; ``clean`` is false if it did so mid-reply."""

    clean: bool


Event = Greeting | Ok | Err | Continuation | MultilineBegin | Data | MultilineEnd | ConnectionClosed
