"""The sans-IO core: replies, bodies, states, and the misuse it refuses."""

from __future__ import annotations

import pytest
from pop3_helpers import GREETING, drain, feed, greeted, logged_in, three_ways

from popvault.errors import LocalProtocolError, RemoteProtocolError
from popvault.pop3 import (
    DEFAULT_LISTING_BOUNDS,
    MAX_LISTING_LINE,
    MAX_STATUS_LINE,
    NEED_DATA,
    OTHER_LISTING_BOUNDS,
    AuthResponse,
    Command,
    ConnectionClosed,
    Continuation,
    Data,
    Err,
    Greeting,
    ListingBounds,
    ListingLine,
    MultilineBegin,
    MultilineEnd,
    Ok,
    Pop3Connection,
    State,
)


@pytest.mark.parametrize("way", range(3))
def test_greeting_with_apop_timestamp(way: int) -> None:
    conn = Pop3Connection()
    events = feed(conn, three_ways(GREETING)[way])
    assert events == [
        Greeting(
            text="POP3 ready <1896.697170952@dbc.mtview.ca.us>",
            apop_timestamp="<1896.697170952@dbc.mtview.ca.us>",
        )
    ]
    assert conn.state is State.AUTHORIZATION


def test_greeting_without_timestamp_and_bare_lf() -> None:
    conn = Pop3Connection()
    assert feed(conn, [b"+OK Dovecot ready.\n"]) == [Greeting("Dovecot ready.", None)]


def test_refused_greeting_is_an_err_without_command() -> None:
    conn = Pop3Connection()
    assert feed(conn, [b"-ERR [SYS/TEMP] too busy\r\n"]) == [Err(None, "too busy", "SYS/TEMP")]
    assert conn.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.send(Command("CAPA"))


def test_garbage_greeting_is_a_remote_error_and_sticks() -> None:
    conn = Pop3Connection()
    conn.receive_data(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Command("QUIT"))


def test_nothing_may_be_sent_before_the_greeting() -> None:
    with pytest.raises(LocalProtocolError, match="not allowed"):
        Pop3Connection().send(Command("CAPA"))


REPLIES = b"+OK\r\n-ERR [AUTH] invalid login\r\n+OK Logged in.\r\n"


@pytest.mark.parametrize("way", range(3))
def test_pipelined_login_replies_in_order(way: int) -> None:
    conn = greeted()
    user, wrong, user2, right = (
        Command("USER", "bob"),
        Command("PASS", "wrong"),
        Command("USER", "bob"),
        Command("PASS", "right"),
    )
    for command in (user, wrong):
        conn.send(command)
    events = feed(conn, [b"+OK\r\n-ERR [AUTH] invalid login\r\n"])
    assert events == [Ok(user, ""), Err(wrong, "invalid login", "AUTH")]
    assert conn.state is State.AUTHORIZATION
    conn.send(user2)
    conn.send(right)
    events = feed(conn, three_ways(b"+OK\r\n+OK Logged in.\r\n")[way])
    assert events == [Ok(user2, ""), Ok(right, "Logged in.")]
    assert conn.state is State.TRANSACTION
    assert conn.outstanding == ()


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        (b"-ERR [IN-USE] mailbox locked", "IN-USE", "mailbox locked"),
        (b"-ERR [sys/temp/disk] later", "SYS/TEMP/DISK", "later"),
        (b"-ERR [LOGIN-DELAY]", "LOGIN-DELAY", ""),
        (b"-ERR [not a code", None, "[not a code"),
        (b"-ERR [] empty", None, "[] empty"),
        (b"-ERR [A//B] bad level", None, "[A//B] bad level"),
        (b"-ERR", None, ""),
        (b"-err no such message", None, "no such message"),
    ],
)
def test_response_codes(line: bytes, code: str | None, text: str) -> None:
    conn = logged_in()
    command = Command("RETR", 9)
    conn.send(command)
    assert feed(conn, [line + b"\r\n"]) == [Err(command, text, code)]


BODY = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n..\r\nplain\r\n"
WIRE = (
    b"+OK 40 octets\r\n"
    + BODY.replace(b"\r\n..", b"\r\n...").replace(b"\r\n.\r\n", b"\r\n..\r\n")
    + b".\r\n"
)


def test_the_test_wire_is_stuffed_as_intended() -> None:
    assert b"\r\n...leading dot\r\n..\r\n...\r\nplain\r\n.\r\n" in WIRE


@pytest.mark.parametrize("way", range(3))
def test_retr_body_unstuffed(way: int) -> None:
    conn = logged_in()
    retr = Command("RETR", 1)
    conn.send(retr)
    events = feed(conn, three_ways(WIRE)[way])
    assert events == [
        MultilineBegin(retr, "40 octets"),
        Data(BODY),
        MultilineEnd(retr),
    ]


@pytest.mark.parametrize("way", range(3))
def test_bare_lf_body_keeps_its_line_endings(way: int) -> None:
    conn = logged_in()
    retr = Command("RETR", 1)
    conn.send(retr)
    wire = b"+OK\nA: b\n\n..x\nmixed\r\nend\n.\n"
    events = feed(conn, three_ways(wire)[way])
    assert events == [
        MultilineBegin(retr, ""),
        Data(b"A: b\n\n.x\nmixed\r\nend\n"),
        MultilineEnd(retr),
    ]


def test_unstuffed_dot_line_from_a_sloppy_server_is_kept() -> None:
    conn = logged_in()
    conn.send(Command("RETR", 1))
    events = feed(conn, [b"+OK\r\n.hidden\r\n.\rx\r\n.\r\n"])
    assert events[1] == Data(b".hidden\r\n.\rx\r\n")


def test_empty_body() -> None:
    conn = logged_in()
    uidl = Command("UIDL")
    conn.send(uidl)
    assert feed(conn, [b"+OK\r\n.\r\n"]) == [MultilineBegin(uidl, ""), MultilineEnd(uidl)]


def test_a_long_line_streams_without_waiting_for_its_end() -> None:
    conn = logged_in()
    conn.send(Command("RETR", 1))
    conn.receive_data(b"+OK\r\n")
    assert isinstance(conn.next_event(), MultilineBegin)
    for _ in range(50):  # 3.2 MB on one line, 64 KiB at a time
        conn.receive_data(b"a" * 65536)
        assert conn.next_event() == Data(b"a" * 65536)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\n.\r\n")
    assert drain(conn) == [Data(b"\r\n"), MultilineEnd(Command("RETR", 1))]


def test_single_and_multi_line_forms_of_list_and_uidl() -> None:
    conn = logged_in()
    commands = [Command("LIST", 2), Command("UIDL", 2), Command("LIST"), Command("TOP", 1, 0)]
    for command in commands:
        conn.send(command)
    wire = b"+OK 2 200\r\n+OK 2 abc\r\n+OK\r\n1 120\r\n2 200\r\n.\r\n+OK\r\nA: b\r\n\r\n.\r\n"
    assert feed(conn, [wire]) == [
        Ok(commands[0], "2 200"),
        Ok(commands[1], "2 abc"),
        MultilineBegin(commands[2], ""),
        ListingLine(commands[2], b"1 120"),
        ListingLine(commands[2], b"2 200"),
        MultilineEnd(commands[2]),
        MultilineBegin(commands[3], ""),
        Data(b"A: b\r\n\r\n"),
        MultilineEnd(commands[3]),
    ]


def test_err_to_a_multi_line_command_has_no_body() -> None:
    conn = logged_in()
    retr, noop = Command("RETR", 7), Command("NOOP")
    conn.send(retr)
    conn.send(noop)
    assert feed(conn, [b"-ERR no such message\r\n+OK\r\n"]) == [
        Err(retr, "no such message", None),
        Ok(noop, ""),
    ]


def test_status_line_bound() -> None:
    conn = greeted()
    conn.send(Command("CAPA"))
    conn.receive_data(b"+OK " + b"x" * (MAX_STATUS_LINE - 6) + b"\r\n")
    assert isinstance(conn.next_event(), MultilineBegin)
    conn = greeted()
    conn.send(Command("CAPA"))
    conn.receive_data(b"+OK " + b"x" * MAX_STATUS_LINE)
    with pytest.raises(RemoteProtocolError, match="longer than"):
        conn.next_event()


def test_unsolicited_line_is_a_remote_error() -> None:
    conn = greeted()
    conn.receive_data(b"-ERR autologout\r\n")
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.next_event()


def test_clean_close_after_quit() -> None:
    conn = logged_in()
    quit_ = Command("QUIT")
    conn.send(quit_)
    assert feed(conn, [b"+OK bye\r\n", b""]) == [Ok(quit_, "bye"), ConnectionClosed(clean=True)]
    assert conn.state is State.CLOSED


def test_quit_ok_in_transaction_enters_update() -> None:
    conn = logged_in()
    conn.send(Command("QUIT"))
    feed(conn, [b"+OK bye\r\n"])
    assert conn.state is State.UPDATE
    with pytest.raises(LocalProtocolError):
        conn.send(Command("NOOP"))


@pytest.mark.parametrize(
    "cut", [b"+OK\r\nhalf a li", b"+OK\r\nline\r\n.", b"+OK\r\nline\r\n.\r", b"+O", b""]
)
def test_eof_mid_reply_is_unclean(cut: bytes) -> None:
    conn = logged_in()
    conn.send(Command("RETR", 1))
    events = feed(conn, [cut, b""])
    assert events[-1] == ConnectionClosed(clean=False)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_stls_hand_over_and_injection() -> None:
    conn = greeted()
    stls = Command("STLS")
    conn.send(stls)
    with pytest.raises(LocalProtocolError):
        conn.send(Command("CAPA"))  # nothing may follow STLS in the clear
    assert feed(conn, [b"+OK Begin TLS\r\n"]) == [Ok(stls, "Begin TLS")]
    assert conn.state is State.UPGRADED
    conn.receive_data(b"+OK injected\r\n")
    with pytest.raises(RemoteProtocolError, match="after accepting STLS"):
        conn.next_event()


def test_after_stls_starts_in_authorization_without_greeting() -> None:
    conn = Pop3Connection(after_stls=True)
    assert conn.state is State.AUTHORIZATION
    assert conn.tls
    with pytest.raises(LocalProtocolError, match="already TLS"):
        conn.send(Command("STLS"))
    capa = Command("CAPA")
    conn.send(capa)
    assert feed(conn, [b"+OK\r\nUSER\r\n.\r\n"])[0] == MultilineBegin(capa, "")


def test_stls_refused_stays_in_authorization() -> None:
    conn = greeted()
    conn.send(Command("STLS"))
    feed(conn, [b"-ERR not now\r\n"])
    assert conn.state is State.AUTHORIZATION


def test_pass_must_follow_user() -> None:
    conn = greeted()
    with pytest.raises(LocalProtocolError, match="follow USER"):
        conn.send(Command("PASS", "secret"))
    conn.send(Command("USER", "bob"))
    feed(conn, [b"-ERR no such user\r\n"])
    with pytest.raises(LocalProtocolError, match="follow USER"):
        conn.send(Command("PASS", "secret"))


def test_transaction_commands_may_be_pipelined_behind_pass() -> None:
    conn = greeted()
    conn.send(Command("USER", "bob"))
    conn.send(Command("PASS", "secret"))
    conn.send(Command("STAT"))  # legal once PASS succeeds
    with pytest.raises(LocalProtocolError):
        conn.send(Command("USER", "eve"))


def test_auth_exchange() -> None:
    conn = greeted()
    auth = Command("AUTH", "PLAIN")
    conn.send(auth)
    with pytest.raises(LocalProtocolError, match="AUTH exchange"):
        conn.send(Command("CAPA"))
    assert feed(conn, [b"+ \r\n"]) == [Continuation(auth, "")]
    with pytest.raises(LocalProtocolError, match="AUTH exchange"):
        conn.send(Command("CAPA"))
    assert conn.send(AuthResponse("AGJvYgBzZWNyZXQ=")) == b"AGJvYgBzZWNyZXQ=\r\n"
    with pytest.raises(LocalProtocolError, match="without a server challenge"):
        conn.send(AuthResponse("eA=="))
    assert feed(conn, [b"+OK welcome\r\n"]) == [Ok(auth, "welcome")]
    assert conn.state is State.TRANSACTION


def test_continuation_outside_auth_is_a_remote_error() -> None:
    conn = logged_in()
    conn.send(Command("NOOP"))
    conn.receive_data(b"+ what\r\n")
    with pytest.raises(RemoteProtocolError, match="continuation"):
        conn.next_event()


@pytest.mark.parametrize("bad", ["a\r\nDELE 1", "a\nb", "a\rb", "a\0b"])
def test_arguments_cannot_inject_commands(bad: str) -> None:
    for verb in ("USER", "PASS", "APOP"):
        with pytest.raises(LocalProtocolError) as info:
            Command(verb, bad)
        if verb != "USER":
            assert bad not in str(info.value)
    with pytest.raises(LocalProtocolError):
        AuthResponse(bad)


def test_command_encoding() -> None:
    assert Command("retr", 3).encode() == b"RETR 3\r\n"
    assert Command("TOP", 1, 0).encode() == b"TOP 1 0\r\n"
    assert Command("PASS", "pass with spaces").encode() == b"PASS pass with spaces\r\n"
    assert Command("PASS", "pässword").encode() == "PASS pässword\r\n".encode()
    with pytest.raises(LocalProtocolError, match="space"):
        Command("USER", "two words")
    with pytest.raises(LocalProtocolError, match="empty"):
        Command("PASS", "")
    with pytest.raises(LocalProtocolError, match="keyword"):
        Command("RE TR")


def test_command_repr_hides_secrets() -> None:
    for command in (Command("PASS", "hunter2"), Command("APOP", "bob", "hunter2")):
        assert "hunter2" not in repr(command)
        assert "hunter2" not in repr(Ok(command, ""))
    assert repr(Command("RETR", 3)) == "Command('RETR 3')"


def test_receive_after_eof_is_local_misuse() -> None:
    conn = greeted()
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed(clean=True)]
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_a_body_in_progress_counts_as_outstanding() -> None:
    conn = logged_in()
    retr, noop = Command("RETR", 1), Command("NOOP")
    conn.send(retr)
    conn.send(noop)
    conn.receive_data(b"+OK\r\nbody")
    assert drain(conn)[0] == MultilineBegin(retr, "")
    assert conn.outstanding == (retr, noop)
    conn.receive_data(b"\r\n.\r\n")
    assert drain(conn)[-1] == MultilineEnd(retr)
    assert conn.outstanding == (noop,)


# -- listings: framed into lines and bounded in the core ------------------------------


def _listing(conn: Pop3Connection, verb: str, pieces: list[bytes]) -> list[bytes]:
    """Send ``verb`` (no argument) and the lines the core frames from ``pieces``."""
    command = Command(verb)
    conn.send(command)
    events = feed(conn, pieces)
    assert events[0] == MultilineBegin(command, "")
    assert events[-1] == MultilineEnd(command)
    assert all(isinstance(e, ListingLine) and e.command == command for e in events[1:-1])
    return [e.line for e in events[1:-1] if isinstance(e, ListingLine)]


LISTINGS = [
    ("CAPA", b"TOP\r\nSASL PLAIN LOGIN\r\nUIDL\r\n", [b"TOP", b"SASL PLAIN LOGIN", b"UIDL"]),
    (
        "UIDL",
        b"1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n",
        [
            b"1 whqtswO00WBw418f9t5JxYwZ",
            b"2 QhdPYR:00WBw1Ph7x7",
        ],
    ),
    ("LIST", b"1 120\r\n2 200 (seen)\r\n", [b"1 120", b"2 200 (seen)"]),
    ("UIDL", b"1 a\n2 b\r\n", [b"1 a", b"2 b"]),  # bare LF and CRLF mixed
    ("LIST", b"", []),  # an empty maildrop
    # Content is not the core's to judge: a NUL, non-UTF-8, an empty line, a
    # lone CR, and a 1000-octet uid all arrive as lines for the parser to judge.
    (
        "UIDL",
        b"1 a\x00b\r\n2 \xff\xfe\r\n\r\n3 a\rb\r\n4 " + b"u" * 1000 + b"\r\n",
        [
            b"1 a\x00b",
            b"2 \xff\xfe",
            b"",
            b"3 a\rb",
            b"4 " + b"u" * 1000,
        ],
    ),
]


@pytest.mark.parametrize("way", range(3))
@pytest.mark.parametrize(("verb", "body", "lines"), LISTINGS)
def test_listings_arrive_one_event_per_line(
    verb: str, body: bytes, lines: list[bytes], way: int
) -> None:
    wire = b"+OK\r\n" + body + b".\r\n"
    assert _listing(logged_in(), verb, three_ways(wire)[way]) == lines


@pytest.mark.parametrize("way", range(3))
def test_listing_lines_are_dot_unstuffed(way: int) -> None:
    # RFC 1939 section 3: a line starting with "." is sent with one more; a
    # line with one dot that is not the terminator was not stuffed and is kept.
    wire = b"+OK\r\n..SASL\r\n...\r\n..\r\n.x\r\n.\r\n"
    assert _listing(greeted(), "CAPA", three_ways(wire)[way]) == [b".SASL", b"..", b".", b".x"]


@pytest.mark.parametrize("way", range(3))
def test_pipelined_listings_keep_their_commands(way: int) -> None:
    conn = logged_in()
    listing, uidl, noop = Command("LIST"), Command("UIDL"), Command("NOOP")
    for command in (listing, uidl, noop):
        conn.send(command)
    wire = b"+OK\r\n1 120\r\n.\r\n+OK\r\n1 abc\r\n.\r\n+OK\r\n"
    assert feed(conn, three_ways(wire)[way]) == [
        MultilineBegin(listing, ""),
        ListingLine(listing, b"1 120"),
        MultilineEnd(listing),
        MultilineBegin(uidl, ""),
        ListingLine(uidl, b"1 abc"),
        MultilineEnd(uidl),
        Ok(noop, ""),
    ]


def test_a_listing_line_is_emitted_as_soon_as_it_ends() -> None:
    conn = logged_in()
    uidl = Command("UIDL")
    conn.send(uidl)
    conn.receive_data(b"+OK\r\n1 abc\r\n2 de")
    assert drain(conn) == [MultilineBegin(uidl, ""), ListingLine(uidl, b"1 abc")]
    conn.receive_data(b"f\r\n")
    assert drain(conn) == [ListingLine(uidl, b"2 def")]


@pytest.mark.parametrize("cut", [b"+OK\r\n1 abc\r\n2 de", b"+OK\r\n1 abc\r\n.", b"+OK\r\n"])
def test_eof_mid_listing_is_unclean(cut: bytes) -> None:
    conn = logged_in()
    conn.send(Command("UIDL"))
    assert feed(conn, [cut, b""])[-1] == ConnectionClosed(clean=False)


def test_message_replies_stay_chunks_and_single_line_forms_stay_ok() -> None:
    conn = logged_in()
    top, uidl = Command("TOP", 1, 0), Command("UIDL", 1)
    conn.send(top)
    conn.send(uidl)
    assert feed(conn, [b"+OK\r\nA: b\r\n\r\n.\r\n+OK 1 abc\r\n"]) == [
        MultilineBegin(top, ""),
        Data(b"A: b\r\n\r\n"),
        MultilineEnd(top),
        Ok(uidl, "1 abc"),
    ]


def test_the_default_bounds() -> None:
    capa, uidl, listing = (DEFAULT_LISTING_BOUNDS[verb] for verb in ("CAPA", "UIDL", "LIST"))
    assert (capa.max_lines, capa.max_octets) == (1_000, 64 * 1024)
    # A 1,000,000-message mailbox at RFC 1939's 70-octet uids (lines < 84 octets) fits.
    assert uidl.max_lines >= 1_000_000
    assert uidl.max_octets >= 1_000_000 * 134
    assert listing == uidl
    assert {b.max_line for b in (capa, uidl, listing)} == {MAX_LISTING_LINE}
    conn = Pop3Connection(listing_bounds={"UIDL": ListingBounds(5, 50, 20)})
    assert conn.listing_bounds("uidl") == ListingBounds(5, 50, 20)
    assert conn.listing_bounds("LIST") == listing  # the others keep their defaults
    assert conn.listing_bounds("XFOO") == OTHER_LISTING_BOUNDS
    with pytest.raises(ValueError, match="positive"):
        ListingBounds(max_lines=0, max_octets=1, max_line=1)


def _bounded(verb: str, bounds: ListingBounds) -> Pop3Connection:
    """A connection in the state ``verb`` needs, with ``bounds`` on its listing."""
    conn = Pop3Connection(listing_bounds={verb: bounds})
    conn.receive_data(GREETING)
    drain(conn)
    if verb != "CAPA":
        conn.send(Command("USER", "bob"))
        conn.send(Command("PASS", "secret"))
        conn.receive_data(b"+OK\r\n+OK\r\n")
        drain(conn)
    return conn


def _exceeds(verb: str, bounds: ListingBounds, body: bytes, way: int, match: str) -> None:
    conn = _bounded(verb, bounds)
    conn.send(Command(verb))
    with pytest.raises(RemoteProtocolError, match=match):
        feed(conn, three_ways(b"+OK\r\n" + body + b".\r\n")[way])
    # The failure is latched, as for any protocol error.
    assert conn.state is State.CLOSED
    with pytest.raises(RemoteProtocolError, match=match):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Command("QUIT"))


_SMALL = ListingBounds(max_lines=4, max_octets=40, max_line=12)
# (verb, bounds, way): small bounds three ways; the real CAPA bounds whole and with
# trailing bytes only (one octet at a time over 64 KiB adds time, not cover).
_CASES = [
    *((verb, _SMALL, way) for verb in ("CAPA", "UIDL") for way in range(3)),
    *(("CAPA", DEFAULT_LISTING_BOUNDS["CAPA"], way) for way in (0, 2)),
    *(("UIDL", ListingBounds(3000, 10**6, MAX_LISTING_LINE), way) for way in (0, 2)),
]


@pytest.mark.parametrize(("verb", "bounds", "way"), _CASES)
def test_a_listing_of_exactly_max_lines_and_then_one_more(
    verb: str, bounds: ListingBounds, way: int
) -> None:
    bounds = ListingBounds(bounds.max_lines, 10**7, bounds.max_line)  # only lines bind
    at = b"x\r\n" * bounds.max_lines
    conn = _bounded(verb, bounds)
    lines = _listing(conn, verb, three_ways(b"+OK\r\n" + at + b".\r\n")[way])
    assert len(lines) == bounds.max_lines
    match = f"{verb} listing has more than {bounds.max_lines} lines"
    _exceeds(verb, bounds, at + b"x\r\n", way, match)


def _octets_of(total: int, max_line: int) -> bytes:
    """Listing lines of exactly ``total`` octets as sent, none over ``max_line``."""
    # The first line is stuffed (RFC 1939 section 3): its extra dot counts too.
    full = b".." + b"a" * (max_line - 2) + b"\r\n"
    count, rest = divmod(total, len(full))
    # A rest of 1 is an empty line with a bare LF; 2 or more, a shorter line.
    last = b"\n" if rest == 1 else b"b" * (rest - 2) + b"\r\n" if rest else b""
    return full * count + last


@pytest.mark.parametrize(("verb", "bounds", "way"), _CASES)
def test_a_listing_of_exactly_max_octets_and_then_one_more(
    verb: str, bounds: ListingBounds, way: int
) -> None:
    bounds = ListingBounds(10**6, bounds.max_octets, bounds.max_line)  # only octets bind
    at = _octets_of(bounds.max_octets, bounds.max_line)
    assert len(at) == bounds.max_octets
    conn = _bounded(verb, bounds)
    lines = _listing(conn, verb, three_ways(b"+OK\r\n" + at + b".\r\n")[way])
    assert lines[0] == b"." + b"a" * (bounds.max_line - 2)
    match = f"{verb} listing exceeds {bounds.max_octets} octets"
    _exceeds(verb, bounds, at + b"\n", way, match)  # one more octet: an empty line


@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
@pytest.mark.parametrize(("verb", "bounds", "way"), _CASES)
def test_a_line_of_exactly_max_line_octets_and_then_one_more(
    verb: str, bounds: ListingBounds, way: int, end: bytes
) -> None:
    max_line = bounds.max_line
    bounds = ListingBounds(10, 10**6, max_line)  # only the line length binds
    line = b"7 " + b"u" * (max_line - 2)
    conn = _bounded(verb, bounds)
    assert _listing(conn, verb, three_ways(b"+OK\r\n" + line + end + b".\r\n")[way]) == [line]
    match = f"line of the {verb} listing exceeds {max_line} octets"
    _exceeds(verb, bounds, line + b"u" + end, way, match)


def test_an_endless_line_fails_as_soon_as_it_is_too_long() -> None:
    # The core does not wait for a line end that may never come.
    conn = logged_in()
    conn.send(Command("UIDL"))
    conn.receive_data(b"+OK\r\n")
    drain(conn)
    conn.receive_data(b"1 " + b"u" * MAX_LISTING_LINE)  # max_line + 2 octets, no LF
    with pytest.raises(RemoteProtocolError, match=f"exceeds {MAX_LISTING_LINE} octets"):
        conn.next_event()


def test_an_endless_capa_fails_at_its_bound_while_read_in_64_kib_pieces() -> None:
    conn = greeted()
    conn.send(Command("CAPA"))
    conn.receive_data(b"+OK\r\n")
    drain(conn)
    piece = b"".join(b"X-CAP-%d\r\n" % n for n in range(6000))  # ~64 KiB, 6,000 lines
    conn.receive_data(piece)
    with pytest.raises(RemoteProtocolError, match="CAPA listing has more than 1000 lines"):
        drain(conn)
