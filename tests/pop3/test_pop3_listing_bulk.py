"""The bulk framing of listings (Pop3Connection.next_listing_lines) against the per-event one.

The general rule, for any listing cut into any chunks under any bounds: the
bulk path gives the same lines, the same end, the same error, and leaves the
next reply in place.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.errors import RemoteProtocolError
from popvault.pop3 import NEED_DATA, Command, Pop3Connection
from popvault.pop3.body import ListingBounds
from popvault.pop3.events import ListingLine, MultilineEnd, Ok

# No LF inside a line, and no CR at its end (with bare-LF line ends it would read as CRLF).
line_bytes = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x").rstrip(b"\r"))
listing_lines = st.lists(
    st.one_of(line_bytes, line_bytes.map(lambda b: b"." + b), line_bytes.map(lambda b: b".." + b)),
    max_size=30,
)


def connection(bounds: ListingBounds) -> Pop3Connection:
    conn = Pop3Connection(listing_bounds={"UIDL": bounds})
    conn.receive_data(b"+OK hi\r\n")
    conn.next_event()
    conn.send(Command("USER", "u"))
    conn.send(Command("PASS", "p"))
    conn.receive_data(b"+OK\r\n+OK\r\n")
    conn.next_event()
    conn.next_event()
    conn.send(Command("UIDL"))
    conn.send(Command("NOOP"))
    return conn


def wire(lines: list[bytes], crlf: bool) -> bytes:
    end = b"\r\n" if crlf else b"\n"
    # Every line starting with "." is stuffed on the wire (RFC 1939 section 3).
    body = b"".join((b"." + line if line.startswith(b".") else line) + end for line in lines)
    return b"+OK\r\n" + body + b"." + end + b"+OK noop\r\n"


def frame(
    conn: Pop3Connection, chunks: list[bytes], *, bulk: bool
) -> tuple[list[bytes], str | None]:
    """The listing's lines, per event or (``bulk``) as the client reads them, and how it ended."""
    lines: list[bytes] = []
    pending = list(chunks)
    try:
        while True:
            batch = conn.next_listing_lines() if bulk else None
            if batch:
                lines += batch
                continue
            event = conn.next_event()
            if event is NEED_DATA:
                if not pending:
                    return lines, "incomplete"
                conn.receive_data(pending.pop(0))
            elif isinstance(event, ListingLine):
                lines.append(event.line)
            elif isinstance(event, MultilineEnd):
                break
    except RemoteProtocolError as exc:
        return lines, str(exc)
    return lines, _after(conn, pending)


def _after(conn: Pop3Connection, pending: list[bytes]) -> str | None:
    """None when the NOOP's reply comes next, in step."""
    for chunk in pending:
        conn.receive_data(chunk)
    event = conn.next_event()
    return None if isinstance(event, Ok) and event.text == "noop" else f"out of step: {event!r}"


@settings(max_examples=300, deadline=None)
@given(
    lines=listing_lines,
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    max_lines=st.integers(min_value=1, max_value=40),
    max_octets=st.integers(min_value=1, max_value=600),
    max_line=st.integers(min_value=1, max_value=16),
)
def test_bulk_framing_is_the_per_event_framing(
    *,
    lines: list[bytes],
    crlf: bool,
    cuts: list[int],
    max_lines: int,
    max_octets: int,
    max_line: int,
) -> None:
    data = wire(lines, crlf)
    points = sorted({cut for cut in cuts if cut < len(data)} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    bounds = ListingBounds(max_lines=max_lines, max_octets=max_octets, max_line=max_line)
    expected, expected_end = frame(connection(bounds), chunks, bulk=False)
    got, got_end = frame(connection(bounds), chunks, bulk=True)
    assert got_end == expected_end
    if expected_end is None:
        assert got == expected == lines
    else:
        assert expected[: len(got)] == got  # an error may come a few lines earlier in bulk
