"""Events the sans-IO POP3 core produces from server bytes.

Each reply to a command becomes exactly one of :class:`Ok`, :class:`Err` or
:class:`MultilineBegin` (followed by zero or more :class:`Data` chunks for a
message (RETR, TOP), or zero or more :class:`ListingLine` events for any other
multi-line reply, and one :class:`MultilineEnd`); an AUTH exchange may add
:class:`Continuation` events before its final reply. The commands carried here
print redacted.
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
    """A ``+ challenge`` line during AUTH (RFC 5034 section 4).

    ``text`` is the line's base64 as sent; ``challenge`` the octets it
    decodes to (the core refuses a line that is not base64).
    """

    command: Command
    text: str
    challenge: bytes = b""

    def __repr__(self) -> str:
        # A challenge may quote the client's identity or an error about its token.
        return f"Continuation({self.command!r}, <{len(self.challenge)} octets>)"


@dataclass(frozen=True, slots=True)
class MultilineBegin:
    """The ``+OK`` line of a multi-line reply; :class:`Data` or :class:`ListingLine` follow."""

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
class ListingLine:
    """One line of a listing (CAPA, UIDL, LIST: any multi-line reply but a message).

    ``line`` is as the server sent it, dot-unstuffed, without its line ending;
    its content is not checked (that is the caller's parser's job, line by line).
    """

    command: Command
    line: bytes


@dataclass(frozen=True, slots=True)
class MultilineEnd:
    """The terminating ``.`` line of a multi-line reply to ``command``."""

    command: Command


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the stream; ``clean`` is false if it did so mid-reply."""

    clean: bool


Event = (
    Greeting
    | Ok
    | Err
    | Continuation
    | MultilineBegin
    | Data
    | ListingLine
    | MultilineEnd
    | ConnectionClosed
)
