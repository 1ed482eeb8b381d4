"""The sans-IO core: replies, bodies, states, and the misuse it refuses."""

from __future__ import annotations

import pytest
from pop3_helpers import GREETING, drain, feed, greeted, logged_in, three_ways

from popvault.errors import LocalProtocolError, RemoteProtocolError
from popvault.pop3 import (
    MAX_STATUS_LINE,
    NEED_DATA,
    AuthResponse,
    Command,
    ConnectionClosed,
    Continuation,
    Data,
    Err,
    Greeting,
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
        Data(b"1 120\r\n2 200\r\n"),
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
        conn.send(AuthResponse("x"))
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
