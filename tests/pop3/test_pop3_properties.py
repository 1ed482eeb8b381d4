"""Property tests of the core: any chunking, any state, any server bytes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pop3_helpers import GREETING, drain, feed, greeted, logged_in

from popvault.errors import LocalProtocolError, RemoteProtocolError
from popvault.pop3 import (
    LEGAL_COMMANDS,
    Command,
    ConnectionClosed,
    Data,
    ListingBounds,
    ListingLine,
    MultilineBegin,
    MultilineEnd,
    Ok,
    Pop3Connection,
    State,
)

# Line pieces chosen to hit every branch of the decoder: dots at line starts,
# CR without LF, empty lines, and lines long enough to span many chunks.
_PIECES = st.sampled_from(
    [b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"x.y", b" ", b"\x00", b"\xff", b".\r", b"a" * 300]
)
_LINE_ENDS = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A message body: lines of awkward content, each ended by CRLF or LF."""
    lines = draw(st.lists(st.tuples(st.lists(_PIECES, max_size=8), _LINE_ENDS), max_size=12))
    out = b""
    for pieces, end in lines:
        content = b"".join(pieces).replace(b"\n", b"")  # a line holds no LF of its own
        out += content + end
    return out


def stuff(body: bytes, terminator: bytes) -> bytes:
    """Our own reference encoder (RFC 1939 section 3), independent of the decoder."""
    lines = body.split(b"\n")  # lines end at LF only: a lone CR stays inside its line
    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines) + terminator


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), cuts=st.lists(st.integers(min_value=0), max_size=20), end=_LINE_ENDS)
def test_dot_stuffing_round_trip_under_any_chunking(
    body: bytes, cuts: list[int], end: bytes
) -> None:
    conn = logged_in()
    retr, noop = Command("RETR", 1), Command("NOOP")
    conn.send(retr)
    conn.send(noop)
    wire = b"+OK\r\n" + stuff(body, b"." + end) + b"+OK after\r\n"
    events = feed(conn, chunked(wire, cuts))
    data = b"".join(e.chunk for e in events if isinstance(e, Data))
    assert data == body
    assert events[0] == MultilineBegin(retr, "")
    assert events[-2:] == [MultilineEnd(retr), Ok(noop, "after")]


def test_reference_encoder_stuffs() -> None:
    assert stuff(b".a\r\nb\r\n..\r\n", b".\r\n") == b"..a\r\nb\r\n...\r\n.\r\n"
    assert stuff(b"x\r.y\n.\r\n", b".\n") == b"x\r.y\n..\r\n.\n"


_VERBS = sorted({verb for verbs in LEGAL_COMMANDS.values() for verb in verbs} | {"LAST", "XTND"})


def _in_state(state: State) -> Pop3Connection:
    if state is State.GREETING:
        return Pop3Connection()
    if state is State.AUTHORIZATION:
        return greeted()
    conn = logged_in() if state in (State.TRANSACTION, State.UPDATE) else greeted()
    verb = {State.UPDATE: "QUIT", State.CLOSED: "QUIT", State.UPGRADED: "STLS"}.get(state)
    if verb is not None:
        conn.send(Command(verb))
        feed(conn, [b"+OK\r\n"])
    assert conn.state is state
    return conn


def _command_for(verb: str, with_argument: bool) -> Command:
    arguments: dict[str, tuple[str | int, ...]] = {
        "USER": ("bob",),
        "PASS": ("secret",),
        "APOP": ("bob", "c4c9334bac560ecc979e58001b3e22fb"),
        "AUTH": ("PLAIN",),
        "RETR": (1,),
        "DELE": (1,),
        "TOP": (1, 0),
    }
    args = arguments.get(verb, (1,) if with_argument and verb in ("LIST", "UIDL") else ())
    return Command(verb, *args)


@given(state=st.sampled_from(list(State)), verb=st.sampled_from(_VERBS), arg=st.booleans())
def test_state_by_command_legality(state: State, verb: str, arg: bool) -> None:
    conn = _in_state(state)
    command = _command_for(verb, arg)
    # PASS also needs USER just before it; covered in test_pop3_core.
    legal = verb in LEGAL_COMMANDS[state] and verb != "PASS"
    if legal:
        assert conn.send(command) == command.encode()
        assert conn.outstanding[-1] == command
    else:
        with pytest.raises(LocalProtocolError):
            conn.send(command)
        assert conn.outstanding == ()


def test_every_state_is_reachable() -> None:
    for state in State:
        assert _in_state(state).state is state


_SCRIPTS = st.sampled_from(
    [
        (),
        ("CAPA",),
        ("USER", "PASS", "STAT"),
        ("USER", "PASS", "LIST", "UIDL", "RETR", "TOP", "QUIT"),
        ("AUTH",),
        ("STLS",),
    ]
)
_SERVER_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [b"+OK", b"-ERR", b"+ ", b"[", b"]", b"/", b" ", b".", b"\r\n", b"\n", b"\r", b"x"]
        ),
        max_size=60,
    ).map(b"".join),
)


@settings(max_examples=400)
@given(
    script=_SCRIPTS,
    junk=_SERVER_BYTES,
    cuts=st.lists(st.integers(min_value=0), max_size=10),
    eof=st.booleans(),
)
def test_any_server_bytes_give_events_or_remote_protocol_error(
    script: tuple[str, ...], junk: bytes, cuts: list[int], eof: bool
) -> None:
    conn = Pop3Connection()
    conn.receive_data(GREETING)
    drain(conn)
    for verb in script:
        conn.send(_command_for(verb, False))
    pieces = [*chunked(junk, cuts), *([b""] if eof else [])]
    try:
        events = feed(conn, pieces)
    except RemoteProtocolError:
        return
    if eof:
        assert isinstance(events[-1], ConnectionClosed)


# Listing lines: anything but LF, including dots at the start, CR, NUL, non-UTF-8.
_LINE_PIECES = st.sampled_from([b".", b"..", b"\r", b"1 ", b"uid", b"\x00", b"\xff", b" "])
_LISTING_LINES = st.lists(
    st.lists(_LINE_PIECES, max_size=6)
    .map(b"".join)
    # A line that ends in CR before a bare LF reads as a CRLF line: not what is meant.
    .filter(lambda line: not line.endswith(b"\r")),
    max_size=15,
)
_BOUNDS = st.builds(
    ListingBounds,
    max_lines=st.integers(min_value=1, max_value=16),
    max_octets=st.integers(min_value=1, max_value=120),
    max_line=st.integers(min_value=1, max_value=20),
)


def _listing_wire(lines: list[bytes], ends: list[bytes]) -> bytes:
    """The listing as a server sends it, via the reference encoder above."""
    body = b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    return stuff(body, b".\r\n")


@settings(max_examples=300)
@given(
    lines=_LISTING_LINES,
    ends=st.lists(_LINE_ENDS, min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_listing_lines_round_trip_under_any_chunking(
    lines: list[bytes], ends: list[bytes], cuts: list[int]
) -> None:
    conn = logged_in()
    uidl, noop = Command("UIDL"), Command("NOOP")
    conn.send(uidl)
    conn.send(noop)
    wire = b"+OK\r\n" + _listing_wire(lines, ends) + b"+OK after\r\n"
    events = feed(conn, chunked(wire, cuts))
    assert events == [
        MultilineBegin(uidl, ""),
        *(ListingLine(uidl, line) for line in lines),
        MultilineEnd(uidl),
        Ok(noop, "after"),
    ]


def _within(wire: bytes, bounds: ListingBounds) -> bool:
    """Our own reading of the bounds, on the octets as sent (terminator not counted)."""
    sent = wire[: -len(b".\r\n")].split(b"\n")[:-1]  # lines as sent, stuffed, no LF
    return (
        len(sent) <= bounds.max_lines
        and len(wire) - len(b".\r\n") <= bounds.max_octets
        and all(len(line.removesuffix(b"\r")) <= bounds.max_line for line in sent)
    )


@settings(max_examples=300)
@given(
    lines=_LISTING_LINES,
    end=_LINE_ENDS,
    bounds=_BOUNDS,
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_a_listing_is_accepted_exactly_when_within_its_bounds(
    lines: list[bytes], end: bytes, bounds: ListingBounds, cuts: list[int]
) -> None:
    conn = Pop3Connection(listing_bounds={"CAPA": bounds})
    conn.receive_data(GREETING)
    drain(conn)
    conn.send(Command("CAPA"))
    wire = _listing_wire(lines, [end])
    pieces = chunked(b"+OK\r\n" + wire, cuts)
    if not _within(wire, bounds):
        with pytest.raises(RemoteProtocolError, match="CAPA listing"):
            feed(conn, pieces)
        return
    events = feed(conn, pieces)
    assert [e.line for e in events if isinstance(e, ListingLine)] == lines
