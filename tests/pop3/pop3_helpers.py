"""Shared helpers for the POP3 tests: drive the sans-IO core and compare what it emits."""

from __future__ import annotations

from collections.abc import Iterable

from popvault.pop3 import (
    NEED_DATA,
    Command,
    ConnectionClosed,
    Data,
    Event,
    Pop3Connection,
)

GREETING = b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n"


def drain(conn: Pop3Connection) -> list[Event]:
    """Every event available now, with adjacent Data chunks merged."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        if isinstance(event, Data) and events and isinstance(events[-1], Data):
            events[-1] = Data(events[-1].chunk + event.chunk)
        else:
            events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def feed(conn: Pop3Connection, pieces: Iterable[bytes]) -> list[Event]:
    """Feed each piece and drain after each; Data merged across pieces."""
    events: list[Event] = []
    for piece in pieces:
        conn.receive_data(piece)
        for event in drain(conn):
            if isinstance(event, Data) and events and isinstance(events[-1], Data):
                events[-1] = Data(events[-1].chunk + event.chunk)
            else:
                events.append(event)
    return events


def greeted(*, tls: bool = False) -> Pop3Connection:
    """A connection that has read a greeting and is in AUTHORIZATION."""
    conn = Pop3Connection(tls=tls)
    conn.receive_data(GREETING)
    drain(conn)
    return conn


def logged_in() -> Pop3Connection:
    """A connection in TRANSACTION state."""
    conn = greeted()
    conn.send(Command("USER", "bob"))
    conn.send(Command("PASS", "secret"))
    conn.receive_data(b"+OK\r\n+OK maildrop has 2 messages\r\n")
    drain(conn)
    return conn


def three_ways(data: bytes) -> list[list[bytes]]:
    """The same bytes whole, one octet at a time, and followed by trailing bytes.

    The trailing bytes are the start of a next reply without its line end, so
    they must produce no event.
    """
    return [[data], [data[i : i + 1] for i in range(len(data))], [data + b"+OK trail"]]
