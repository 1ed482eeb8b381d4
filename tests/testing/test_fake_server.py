"""FakePop3Server against independent peers: stdlib poplib and raw sockets."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import poplib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_client import TIMEOUT, Raw, login, unstuff, wait_for

import popvault.testing
from dovecot import TlsCerts
from popvault.testing import (
    DEFAULT_CAPABILITIES,
    FakePop3Server,
    Served,
    large_attachment_message,
)

MESSAGES = [
    b"Subject: one\r\n\r\nfirst body\r\n",
    b"Subject: two\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    b"Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\nno final newline",
]


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(MESSAGES) as srv:
        yield srv


@pytest.fixture
def raw(server: FakePop3Server) -> Iterator[Raw]:
    peer = Raw(server)
    yield peer
    peer.close()


def shortcmd(client: poplib.POP3, line: str) -> bytes:
    """Send one command with poplib and return its +OK line (raises on -ERR)."""
    send: Callable[[str], bytes] = getattr(client, "_shortcmd")  # noqa: B009 - private in typeshed
    return send(line)


def whole(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


# -- a normal session ---------------------------------------------------------


def test_a_whole_session_with_poplib(server: FakePop3Server) -> None:
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    assert client.getwelcome().endswith(b"<1896.697170952@fake.popvault.test>")
    assert client.user("user").startswith(b"+OK")
    assert client.pass_("secret").startswith(b"+OK")
    assert client.stat() == (3, sum(len(m) for m in MESSAGES))
    _, listing, _ = client.list()
    assert listing == [f"{n} {len(m)}".encode() for n, m in enumerate(MESSAGES, 1)]
    _, uidls, _ = client.uidl()
    assert [u.split()[1].decode() for u in uidls] == [u for u, _ in server.mailbox]
    for number, message in enumerate(MESSAGES[:2], 1):
        assert whole(client.retr(number)[1]) == message
    assert whole(client.retr(3)[1]) == MESSAGES[2] + b"\r\n"
    assert client.noop() == b"+OK"
    assert client.quit().startswith(b"+OK")
    assert server.sessions == 1
    assert server.commands == [
        *("USER user", "PASS secret", "STAT", "LIST", "UIDL"),
        *("RETR 1", "RETR 2", "RETR 3", "NOOP", "QUIT"),
    ]


def test_single_message_list_and_uidl(server: FakePop3Server) -> None:
    client = login(server)
    assert shortcmd(client, "LIST 2") == f"+OK 2 {len(MESSAGES[1])}".encode()
    assert client.uidl(3) == f"+OK 3 {server.mailbox[2][0]}".encode()
    with pytest.raises(poplib.error_proto, match="no such message"):
        client.list(4)
    with pytest.raises(poplib.error_proto, match="message number"):
        client.uidl("x")
    client.quit()


def test_uidls_given_are_used_and_must_match_the_messages() -> None:
    with FakePop3Server(MESSAGES[:2], uidls=["a", "b"]) as srv:
        assert [u for u, _ in srv.mailbox] == ["a", "b"]
        assert srv.add_message(b"x\r\n") not in {"a", "b"}
        assert srv.add_message(b"y\r\n", uidl="c") == "c"
    with pytest.raises(ValueError, match="2 messages but 1 uidls"):
        FakePop3Server(MESSAGES[:2], uidls=["a"])


def test_generated_uidls_are_unique_and_rfc_shaped() -> None:
    srv = FakePop3Server([b"same\r\n"] * 5)
    uidls = [u for u, _ in srv.mailbox]
    assert len(set(uidls)) == 5
    # RFC 1939 section 7: 1 to 70 characters from 0x21 to 0x7E.
    assert all(1 <= len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u) for u in uidls)


def test_top(server: FakePop3Server) -> None:
    client = login(server)
    assert whole(client.top(3, 0)[1]) == b"Subject: three\r\n\r\n"
    assert whole(client.top(3, 2)[1]) == b"Subject: three\r\n\r\nline 1\r\nline 2\r\n"
    assert whole(client.top(3, 99)[1]) == MESSAGES[2] + b"\r\n"
    with pytest.raises(poplib.error_proto, match="usage"):
        shortcmd(client, "TOP 1")
    client.quit()


def test_keywords_are_case_insensitive(raw: Raw, server: FakePop3Server) -> None:
    raw.line()
    raw.send("user user", "pass secret", "stat")
    assert raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK")
    assert raw.line() == f"+OK 3 {sum(map(len, MESSAGES))}\r\n".encode()


# -- the wire format -----------------------------------------------------------


def test_retr_is_dot_stuffed_and_terminated_on_the_wire(raw: Raw, server: FakePop3Server) -> None:
    raw.login(server)
    raw.send("RETR 2", "RETR 3")
    assert raw.line() == f"+OK {len(MESSAGES[1])} octets\r\n".encode()
    assert raw.multi() == (
        b"Subject: two\r\n\r\n..starts with a dot\r\n...two dots\r\n..\r\nend\r\n.\r\n"
    )
    raw.line()
    # A last line without CRLF gets one before the terminator, as real servers do.
    assert raw.multi().endswith(b"line 3\r\nno final newline\r\n.\r\n")


def test_pipelined_commands_are_answered_in_order(raw: Raw, server: FakePop3Server) -> None:
    raw.line()
    raw.send("CAPA", "USER user", "PASS secret", "STAT", "LIST", "UIDL 1", "DELE 1", "QUIT")
    data = raw.until_closed()
    replies = data.split(b"\r\n")
    assert replies[0] == b"+OK capability list follows"
    assert b"PIPELINING" in replies
    after_capa = replies[replies.index(b".") + 1 :]
    assert after_capa[0] == b"+OK send PASS"
    assert after_capa[1].startswith(b"+OK maildrop locked")
    assert after_capa[2] == f"+OK 3 {sum(map(len, MESSAGES))}".encode()
    assert after_capa[-3] == b"+OK message 1 deleted"
    assert after_capa[-2] == b"+OK popvault fake POP3 server signing off"
    assert server.deleted == [server_uidl(MESSAGES[0])]


def server_uidl(message: bytes) -> str:
    return f"fake000001-{hashlib.sha256(message).hexdigest()[:16]}"


def test_a_large_message_streams_through(server: FakePop3Server) -> None:
    big = large_attachment_message(3_000_000)
    server.add_message(big)
    client = login(server)
    assert shortcmd(client, "LIST 4") == f"+OK 4 {len(big)}".encode()
    assert whole(client.retr(4)[1]) == big
    client.quit()


# -- states, errors, deletion ------------------------------------------------------


def test_unknown_commands_and_wrong_state_get_err(raw: Raw, server: FakePop3Server) -> None:
    raw.line()
    raw.send("XYZZY", "RETR 1", "NOOP", "PASS secret", "")
    assert raw.line() == b"-ERR unknown command\r\n"
    assert raw.line().startswith(b"-ERR RETR not allowed in the AUTHORIZATION state")
    assert raw.line().startswith(b"-ERR NOOP not allowed")
    assert raw.line() == b"-ERR give USER first\r\n"
    assert raw.line() == b"-ERR unknown command\r\n"
    raw.send("USER user", "PASS secret", "USER user", "STLS")
    raw.line()
    raw.line()
    assert raw.line().startswith(b"-ERR USER not allowed in the TRANSACTION state")
    assert raw.line().startswith(b"-ERR STLS not allowed")


def test_an_over_long_command_line_is_refused(raw: Raw) -> None:
    raw.line()
    raw.send("USER " + "u" * 251)  # 5 + 251 + CRLF = 258 octets > 255 (RFC 2449 section 4)
    assert raw.line() == b"-ERR command line too long\r\n"
    raw.send("USER " + "u" * 248)  # exactly 255 octets
    assert raw.line() == b"+OK send PASS\r\n"


def test_wrong_password_is_an_auth_error(server: FakePop3Server) -> None:
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    client.user("user")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] invalid login"):
        client.pass_("wrong")
    client.user("nobody")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("secret")
    client.user("user")
    assert client.pass_("secret").startswith(b"+OK")
    client.quit()


def test_apop() -> None:
    with FakePop3Server(MESSAGES, username="ann", password="pw") as srv:
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        assert client.apop("ann", "pw").startswith(b"+OK")
        assert client.stat()[0] == 3
        client.quit()
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.apop("ann", "wrong")
        client.quit()


def test_no_apop_without_a_timestamp() -> None:
    with FakePop3Server(apop_timestamp=None) as srv:
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        assert b"<" not in client.getwelcome()
        with pytest.raises(poplib.error_proto, match="APOP not supported"):
            shortcmd(client, "APOP user 0123456789abcdef0123456789abcdef")
        client.quit()


def test_dele_takes_effect_only_at_quit(server: FakePop3Server) -> None:
    dropped = login(server)
    dropped.dele(1)
    dropped.close()  # no QUIT: RFC 1939 section 6, nothing is removed
    wait_for(lambda: not server_is_locked(server))
    assert len(server.mailbox) == 3
    assert server.deleted == []
    client = login(server)
    first_uidl = server.mailbox[0][0]
    client.dele(1)
    assert client.stat() == (2, len(MESSAGES[1]) + len(MESSAGES[2]))
    assert len(server.mailbox) == 3  # still there until QUIT
    client.quit()
    assert server.deleted == [first_uidl]
    assert [raw for _, raw in server.mailbox] == MESSAGES[1:]


def test_deleted_messages_are_refused_and_rset_brings_them_back(server: FakePop3Server) -> None:
    client = login(server)
    client.dele(2)
    for call in (lambda: client.retr(2), lambda: client.dele(2), lambda: client.list(2)):
        with pytest.raises(poplib.error_proto, match="message deleted"):
            call()
    assert [line.split()[0] for line in client.list()[1]] == [b"1", b"3"]
    assert [line.split()[0] for line in client.uidl()[1]] == [b"1", b"3"]
    assert client.rset().startswith(b"+OK")
    assert client.stat()[0] == 3
    client.quit()
    assert server.deleted == []


def test_deleted_is_in_the_order_of_the_deles(server: FakePop3Server) -> None:
    uidls = [u for u, _ in server.mailbox]
    client = login(server)
    client.dele(3)
    client.dele(1)
    client.quit()
    assert server.deleted == [uidls[2], uidls[0]]
    assert server.mailbox == [(uidls[1], MESSAGES[1])]


def test_a_second_session_is_refused_while_the_first_holds_the_lock(
    server: FakePop3Server,
) -> None:
    first = login(server)
    second = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    second.user("user")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\] mailbox locked"):
        second.pass_("secret")
    first.quit()
    second.user("user")
    assert second.pass_("secret").startswith(b"+OK")
    second.quit()
    assert server.sessions == 2


def test_a_message_added_during_a_session_shows_in_the_next(server: FakePop3Server) -> None:
    client = login(server)
    server.add_message(b"Subject: late\r\n\r\nlate\r\n")
    assert client.stat()[0] == 3
    client.quit()
    client = login(server)
    assert client.stat()[0] == 4
    client.quit()


# -- CAPA and TLS --------------------------------------------------------------------


def test_default_capabilities(server: FakePop3Server) -> None:
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    capa = client.capa()
    for name in ("TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"):
        assert name in capa
    assert "STLS" not in capa
    client.quit()


def test_given_capabilities_replace_the_default() -> None:
    with FakePop3Server(capabilities=["TOP", "SASL PLAIN"]) as srv:
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        assert client.capa() == {"TOP": [], "SASL": ["PLAIN"]}
        client.quit()


def test_no_capa_and_no_uidl(server: FakePop3Server) -> None:
    server.no_uidl = True
    client = login(server)
    assert "UIDL" not in client.capa()
    with pytest.raises(poplib.error_proto, match="unknown command"):
        client.uidl()
    server.no_capa = True
    with pytest.raises(poplib.error_proto, match="unknown command"):
        shortcmd(client, "CAPA")
    client.quit()


def test_stls_upgrades_then_stops_offering(tls_certs: TlsCerts) -> None:
    with FakePop3Server(MESSAGES, stls_context=tls_certs.server_context()) as srv:
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        assert "STLS" in client.capa()
        client.stls(tls_certs.client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        assert "STLS" not in client.capa()
        with pytest.raises(poplib.error_proto, match="STLS not available"):
            shortcmd(client, "STLS")
        client.user("user")
        client.pass_("secret")
        assert whole(client.retr(1)[1]) == MESSAGES[0]
        client.quit()


def test_stls_discards_commands_sent_before_the_handshake(tls_certs: TlsCerts) -> None:
    with FakePop3Server(stls_context=tls_certs.server_context()) as srv:
        peer = Raw(srv)
        peer.line()
        peer.send("STLS", "USER user")  # an injected command riding along in plaintext
        assert peer.line().startswith(b"+OK")
        tls = tls_certs.client_context().wrap_socket(peer.sock, server_hostname="localhost")
        tls.sendall(b"PASS secret\r\n")
        assert tls.recv(1024) == b"-ERR give USER first\r\n"
        tls.close()


def test_without_an_stls_context_stls_is_refused(server: FakePop3Server) -> None:
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    with pytest.raises(poplib.error_proto, match="STLS not available"):
        shortcmd(client, "STLS")
    client.quit()


def test_implicit_tls_with_a_verified_certificate(tls_certs: TlsCerts) -> None:
    with FakePop3Server(MESSAGES, tls_context=tls_certs.server_context()) as srv:
        client = poplib.POP3_SSL(srv.host, srv.port, context=tls_certs.client_context())
        assert "STLS" not in client.capa()
        client.user("user")
        client.pass_("secret")
        assert client.stat()[0] == 3
        client.quit()


def test_a_client_that_rejects_the_certificate_does_not_break_stop(tls_certs: TlsCerts) -> None:
    srv = FakePop3Server(tls_context=tls_certs.server_context()).start()
    context = ssl.create_default_context()  # system trust only: our CA is not in it
    with (
        socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="localhost")
    srv.stop()


# -- faults and quirks ---------------------------------------------------------------


def test_fail_command_with_times_and_arg(server: FakePop3Server) -> None:
    server.fail_command("RETR", "-ERR [SYS/TEMP] try later", arg="2")
    server.fail_command("noop", times=1)
    client = login(server)
    assert whole(client.retr(1)[1]) == MESSAGES[0]
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] try later"):
        client.retr(2)
    with pytest.raises(poplib.error_proto, match="-ERR failed"):
        client.noop()
    assert client.noop() == b"+OK"
    client.quit()
    client = login(server)
    with pytest.raises(poplib.error_proto, match="SYS/TEMP"):
        client.retr(2)  # still failing in a later session
    server.clear_faults()
    assert whole(client.retr(2)[1]) == MESSAGES[1]
    client.quit()


def test_fail_command_on_login_and_greeting(server: FakePop3Server) -> None:
    server.fail_command("PASS", "-ERR [IN-USE] locked", times=1)
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    client.user("user")
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        client.pass_("secret")
    client.quit()
    server.fail_command("GREETING", "-ERR [SYS/TEMP] too busy")
    peer = Raw(server)
    assert peer.line() == b"-ERR [SYS/TEMP] too busy\r\n"
    peer.close()


def test_fail_command_checks_its_arguments(server: FakePop3Server) -> None:
    with pytest.raises(ValueError, match="times"):
        server.fail_command("RETR", times=0)
    with pytest.raises(ValueError, match="octets"):
        server.cut_after(-1)
    with pytest.raises(ValueError, match="after_octets"):
        server.hang_on("RETR", -1)


@pytest.mark.parametrize("octets", [0, 10, 60, 200])
def test_cut_after_sends_exactly_that_many_octets(server: FakePop3Server, octets: int) -> None:
    reference = Raw(server)
    reference.line()
    reference.send("USER user", "PASS secret", "RETR 2", "QUIT")
    full = reference.until_closed()
    reference.close()
    server.cut_after(octets)
    peer = Raw(server)
    peer.send("USER user", "PASS secret", "RETR 2", "QUIT")
    received = peer.until_closed()
    peer.close()
    greeting = b"+OK popvault fake POP3 server ready <1896.697170952@fake.popvault.test>\r\n"
    assert received == (greeting + full)[:octets]
    assert server.deleted == []


def test_a_quit_whose_reply_is_cut_has_still_deleted(server: FakePop3Server) -> None:
    peer = Raw(server)
    peer.login(server)
    peer.send("DELE 1")
    peer.line()
    server.cut_after(1)  # this session sent far more already: QUIT's whole reply is lost
    peer.send("QUIT")
    assert peer.until_closed() == b""
    peer.close()
    wait_for(lambda: server.deleted != [])
    assert [raw for _, raw in server.mailbox] == MESSAGES[1:]


def test_hang_on_keeps_the_socket_open_and_silent(server: FakePop3Server) -> None:
    server.hang_on("RETR", after_octets=5)
    peer = Raw(server, timeout=0.5)
    peer.login(server)
    peer.send("RETR 1")
    with pytest.raises(TimeoutError):
        peer.line()
    assert peer.buf == b"+OK 2"
    started = time.monotonic()
    server.stop()  # wakes the hanging thread; a hang is not a server error
    assert time.monotonic() - started < 3
    assert peer.sock.recv(10) == b""
    peer.close()


def test_a_client_leaving_a_hang_releases_the_lock(server: FakePop3Server) -> None:
    server.hang_on("STAT")
    peer = Raw(server, timeout=0.3)
    peer.login(server)
    peer.send("STAT")
    with pytest.raises(TimeoutError):
        peer.line()
    peer.close()
    server.clear_faults()
    wait_for(lambda: not server_is_locked(server))
    login(server).quit()


def test_delay_slows_every_response(server: FakePop3Server) -> None:
    client = login(server)
    server.delay = 0.2
    started = time.monotonic()
    client.noop()
    client.noop()
    assert time.monotonic() - started >= 0.4
    client.quit()


def test_bare_lf_everywhere(server: FakePop3Server) -> None:
    server.bare_lf = True
    peer = Raw(server)
    peer.send("USER user", "PASS secret", "RETR 1", "QUIT")
    data = peer.until_closed()
    peer.close()
    assert b"\r" not in data
    assert data.endswith(
        b"\nSubject: one\n\nfirst body\n.\n+OK popvault fake POP3 server signing off\n"
    )


def test_clear_faults_resets_quirks(server: FakePop3Server) -> None:
    server.no_uidl = server.no_capa = server.bare_lf = True
    server.delay = 1.0
    server.hang_on("NOOP")
    server.clear_faults()
    assert (server.no_uidl, server.no_capa, server.bare_lf, server.delay) == (
        False,
        False,
        False,
        0,
    )
    client = login(server)
    assert client.noop() == b"+OK"
    assert len(client.uidl()[1]) == 3
    client.quit()


# -- hooks: UTF8, serve, list_size, uidl_for, rewrite_reply, refusals --------------------

UTF8_CAPA = [*DEFAULT_CAPABILITIES, "UTF8"]


def md5_hex(raw: bytes) -> str:
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def test_utf8_is_accepted_in_authorization_when_capa_names_it() -> None:
    with FakePop3Server(MESSAGES, capabilities=UTF8_CAPA) as srv:
        peer = Raw(srv)
        peer.line()
        assert peer.command("UTF8") == b"+OK UTF8 enabled\r\n"
        assert peer.command("USER user").startswith(b"+OK")
        assert peer.command("PASS secret").startswith(b"+OK")
        # RFC 6856 section 3.1: only in the AUTHORIZATION state.
        assert peer.command("UTF8") == b"-ERR UTF8 not allowed in the TRANSACTION state\r\n"
        peer.close()
        other = Raw(srv)
        other.login(srv)  # session 2 never sends UTF8
        other.close()
        assert srv.utf8_sessions == {1: True}


def test_a_utf8_capability_with_arguments_counts() -> None:
    with FakePop3Server(capabilities=["USER", "UTF8 USER"]) as srv:
        peer = Raw(srv)
        peer.line()
        assert peer.command("utf8") == b"+OK UTF8 enabled\r\n"
        peer.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"capabilities": ["TOP", "UIDL", "XUTF8", "LANG"]},
        {"capabilities": UTF8_CAPA, "capa": False},
    ],
    ids=["default", "other-words", "no-capa"],
)
def test_utf8_without_the_capability_is_an_unknown_command(options: dict[str, Any]) -> None:
    with FakePop3Server(MESSAGES, **options) as srv:
        peer = Raw(srv)
        peer.line()
        assert peer.command("UTF8") == b"-ERR unknown command\r\n"
        peer.send("USER user", "PASS secret")
        peer.line()
        assert peer.line().startswith(b"+OK")
        assert peer.command("UTF8") == b"-ERR unknown command\r\n"
        peer.close()
        assert srv.utf8_sessions == {1: False}


def test_fail_command_applies_to_utf8() -> None:
    with FakePop3Server(capabilities=UTF8_CAPA) as srv:
        srv.fail_command("UTF8", "-ERR [SYS/TEMP] not now", times=1)
        peer = Raw(srv)
        peer.line()
        assert peer.command("UTF8") == b"-ERR [SYS/TEMP] not now\r\n"
        assert srv.utf8_sessions == {1: False}
        assert peer.command("UTF8") == b"+OK UTF8 enabled\r\n"
        assert srv.utf8_sessions == {1: True}
        peer.close()


def test_serve_replaces_what_retr_and_top_send_but_not_the_listed_size() -> None:
    seen: list[Served] = []

    def serve(served: Served) -> bytes:
        seen.append(served)
        return f"X-Served: {served.session}\r\n".encode() + served.raw

    with FakePop3Server(MESSAGES, serve=serve, capabilities=UTF8_CAPA) as srv:
        uidls = [u for u, _ in srv.mailbox]
        client = login(srv)
        retr = client.retr(1)
        assert retr[0] == f"+OK {len(MESSAGES[0])} octets".encode()
        assert whole(retr[1]) == b"X-Served: 1\r\n" + MESSAGES[0]
        assert whole(client.top(2, 0)[1]) == b"X-Served: 1\r\nSubject: two\r\n\r\n"
        assert shortcmd(client, "LIST 1") == f"+OK 1 {len(MESSAGES[0])}".encode()
        assert client.stat() == (3, sum(map(len, MESSAGES)))
        client.quit()
        peer = Raw(srv)
        peer.line()
        assert peer.command("UTF8").startswith(b"+OK")
        peer.send("USER user", "PASS secret", "RETR 3")
        peer.line()
        peer.line()
        assert peer.line().startswith(b"+OK")
        assert unstuff(peer.multi()) == b"X-Served: 2\r\n" + MESSAGES[2] + b"\r\n"
        peer.close()
    assert seen == [
        Served(MESSAGES[0], uidls[0], 1, utf8=False, session=1),
        Served(MESSAGES[1], uidls[1], 2, utf8=False, session=1),
        Served(MESSAGES[2], uidls[2], 3, utf8=True, session=2),
    ]


def test_list_size_is_what_list_and_stat_report() -> None:
    with FakePop3Server(MESSAGES, list_size=lambda raw: len(raw) * 10 + 1) as srv:
        sizes = [len(m) * 10 + 1 for m in MESSAGES]
        client = login(srv)
        assert client.stat() == (3, sum(sizes))
        _, listing, _ = client.list()
        assert listing == [f"{n} {size}".encode() for n, size in enumerate(sizes, 1)]
        assert shortcmd(client, "LIST 2") == f"+OK 2 {sizes[1]}".encode()
        assert whole(client.retr(1)[1]) == MESSAGES[0]  # the content is the stored one
        client.quit()


def test_uidl_for_names_messages_and_repeated_uidls_are_kept() -> None:
    raws = [MESSAGES[0], MESSAGES[1], MESSAGES[0]]
    with FakePop3Server(raws, uidl_for=md5_hex) as srv:
        assert srv.add_message(MESSAGES[2]) == md5_hex(MESSAGES[2])
        assert srv.add_message(MESSAGES[2], "given") == "given"
        uidls = [u for u, _ in srv.mailbox]
        assert uidls == [*map(md5_hex, raws), md5_hex(MESSAGES[2]), "given"]
        client = login(srv)
        assert [line.split()[1].decode() for line in client.uidl()[1]] == uidls
        client.dele(3)  # the second of two byte-identical messages
        client.quit()
    assert srv.deleted == [md5_hex(MESSAGES[0])]
    assert [raw for _, raw in srv.mailbox] == [MESSAGES[0], MESSAGES[1], MESSAGES[2], MESSAGES[2]]


def test_rewrite_reply_sees_each_reply_whole_and_its_result_is_sent(
    server: FakePop3Server,
) -> None:
    seen: list[tuple[str, bytes]] = []

    def rewrite(verb: str, reply: bytes) -> bytes:
        seen.append((verb, reply))
        return reply.replace(b"\r\n", b"  \r\n", 1)  # spaces after each status line

    server.rewrite_reply = rewrite
    server.fail_command("NOOP", "-ERR scripted")
    peer = Raw(server)
    peer.send("USER user", "PASS secret", "LIST", "RETR 2", "NOOP", "XYZZY", "QUIT")
    data = peer.until_closed()
    peer.close()
    verbs = [verb for verb, _ in seen]
    assert verbs == ["GREETING", "USER", "PASS", "LIST", "RETR", "NOOP", "XYZZY", "QUIT"]
    replies = dict(seen)
    total = sum(map(len, MESSAGES))
    assert replies["LIST"] == (
        f"+OK 3 messages ({total} octets)\r\n".encode()
        + b"".join(f"{n} {len(m)}\r\n".encode() for n, m in enumerate(MESSAGES, 1))
        + b".\r\n"
    )
    assert replies["RETR"].startswith(f"+OK {len(MESSAGES[1])} octets\r\nSubject: two".encode())
    assert replies["RETR"].endswith(b"\r\n..\r\nend\r\n.\r\n")  # dot-stuffed and terminated
    assert replies["NOOP"] == b"-ERR scripted\r\n"
    assert replies["XYZZY"] == b"-ERR unknown command\r\n"
    assert data == b"".join(reply.replace(b"\r\n", b"  \r\n", 1) for _, reply in seen)


def test_rewrite_reply_runs_before_bare_lf_and_cut(server: FakePop3Server) -> None:
    seen: list[bytes] = []

    def rewrite(verb: str, reply: bytes) -> bytes:
        seen.append(reply)
        return b"+OK " + b"x" * 100 + b"\r\n" if verb == "GREETING" else reply

    server.rewrite_reply = rewrite
    server.bare_lf = True
    peer = Raw(server)
    assert peer.line() == b"+OK " + b"x" * 100 + b"\n"
    assert peer.command("NOOP") == b"-ERR NOOP not allowed in the AUTHORIZATION state\n"
    peer.close()
    assert seen[1].endswith(b"\r\n")  # the hook got CRLF; bare_lf came after it
    server.bare_lf = False
    server.cut_after(50)
    peer = Raw(server)
    assert peer.until_closed() == (b"+OK " + b"x" * 100)[:50]  # the cut counts rewritten octets
    peer.close()


def test_login_refusal_and_lock_refusal_are_the_texts_given() -> None:
    with FakePop3Server(
        MESSAGES, login_refusal="invalid login", lock_refusal="unable to lock maildrop"
    ) as srv:
        client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
        client.user("user")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_("wrong")
        assert refused.value.args == (b"-ERR invalid login",)
        with pytest.raises(poplib.error_proto) as refused:
            client.apop("user", "wrong")
        assert refused.value.args == (b"-ERR invalid login",)
        holder = login(srv)
        client.user("user")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_("secret")
        assert refused.value.args == (b"-ERR unable to lock maildrop",)
        holder.quit()
        client.quit()


def test_vanished_must_be_err_or_drop() -> None:
    with pytest.raises(ValueError, match="vanished"):
        FakePop3Server(vanished="ignore")  # type: ignore[arg-type]


# -- other clients: the lock, remove_message, vanished, on_command ----------------------


def test_the_exclusive_lock_is_visible(server: FakePop3Server) -> None:
    assert (server.holds_lock, server.in_transaction) == (False, 0)
    client = login(server)
    assert (server.holds_lock, server.in_transaction) == (True, 1)
    client.quit()
    assert (server.holds_lock, server.in_transaction) == (False, 0)


def test_without_the_exclusive_lock_sessions_overlap_with_their_own_snapshots() -> None:
    with FakePop3Server(MESSAGES, exclusive_lock=False) as srv:
        first = login(srv)
        late = srv.add_message(b"Subject: late\r\n\r\nlate\r\n")
        second = login(srv)
        assert (srv.holds_lock, srv.in_transaction) == (False, 2)
        assert first.stat()[0] == 3
        assert second.stat()[0] == 4
        uidls = [u for u, _ in srv.mailbox]
        second.dele(1)
        second.dele(4)
        second.quit()
        assert srv.deleted == [uidls[0], late]
        # The first session still counts message 1, which the second removed.
        with pytest.raises(poplib.error_proto, match="deleted by another client"):
            first.retr(1)
        assert whole(first.retr(2)[1]) == MESSAGES[1]
        first.dele(1)
        first.quit()
        assert srv.deleted == [uidls[0], late]  # message 1 is not deleted twice
        assert [raw for _, raw in srv.mailbox] == MESSAGES[1:]
        wait_for(lambda: srv.in_transaction == 0)


def test_remove_message_by_uidl_or_index(server: FakePop3Server) -> None:
    uidls = [u for u, _ in server.mailbox]
    assert server.remove_message(uidls[1]) == (uidls[1], MESSAGES[1])
    assert server.remove_message(0) == (uidls[0], MESSAGES[0])
    assert server.mailbox == [(uidls[2], MESSAGES[2])]
    with pytest.raises(KeyError):
        server.remove_message("no-such-uidl")
    with pytest.raises(IndexError):
        server.remove_message(1)
    assert server.deleted == []  # another client's deletion, not this server's DELE + QUIT
    client = login(server)
    assert client.stat()[0] == 1
    client.quit()


def test_remove_message_picks_one_of_repeated_uidls_by_index() -> None:
    srv = FakePop3Server([b"a\r\n", b"b\r\n", b"c\r\n"], uidls=["u", "v", "u"])
    assert srv.remove_message(2) == ("u", b"c\r\n")
    assert srv.remove_message("u") == ("u", b"a\r\n")
    assert srv.mailbox == [("v", b"b\r\n")]


def test_a_message_removed_during_a_session_is_refused_with_vanished_err(
    server: FakePop3Server, raw: Raw
) -> None:
    uidls = [u for u, _ in server.mailbox]
    raw.login(server)
    server.remove_message(0)
    refusal = b"-ERR message was deleted by another client\r\n"
    for command in ("RETR 1", "TOP 1 0", "LIST 1"):
        assert raw.command(command) == refusal, command
    assert raw.command("UIDL 1") == f"+OK 1 {uidls[0]}\r\n".encode()  # its number stays
    assert raw.command("RETR 2").startswith(b"+OK")
    assert unstuff(raw.multi()) == MESSAGES[1]
    assert raw.command("DELE 1").startswith(b"+OK")
    assert raw.command("QUIT").startswith(b"+OK")
    assert server.deleted == []
    assert [raw for _, raw in server.mailbox] == MESSAGES[1:]


def test_a_message_removed_during_a_session_is_cut_off_with_vanished_drop() -> None:
    message = b"Subject: big\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(200))
    with FakePop3Server([message, MESSAGES[0]], vanished="drop") as srv:
        peer = Raw(srv)
        peer.login(srv)
        srv.remove_message(0)
        # LIST n answers from the session's snapshot; only the content is gone.
        assert peer.command("LIST 1") == f"+OK 1 {len(message)}\r\n".encode()
        peer.send("RETR 1", "NOOP")
        received = peer.until_closed()
        peer.close()
        status = f"+OK {len(message)} octets\r\n".encode()
        assert received == status + message[: len(message) // 2]
        assert srv.deleted == []
        assert srv.mailbox == [(srv.mailbox[0][0], MESSAGES[0])]
        peer = Raw(srv)
        peer.login(srv)
        peer.send("TOP 1 0")  # a later session sees no vanished message
        assert peer.line().startswith(b"+OK")
        assert peer.multi() == b"Subject: one\r\n\r\n.\r\n"
        peer.close()


def test_vanished_drop_cuts_top_too() -> None:
    message = b"Subject: big\r\n\r\n" + b"x" * 500 + b"\r\n"
    with FakePop3Server([message], vanished="drop") as srv:
        peer = Raw(srv)
        peer.login(srv)
        srv.remove_message(0)
        peer.send("TOP 1 1")
        received = peer.until_closed()
        peer.close()
        assert received == b"+OK top of message follows\r\n" + message[: len(message) // 2]


def test_on_command_lets_another_client_remove_message_1_at_the_first_retr(
    server: FakePop3Server,
) -> None:
    calls: list[tuple[int, str]] = []

    def other_client(session: int, arg: str) -> None:
        calls.append((session, arg))
        server.remove_message(0)

    server.on_command("retr", other_client, times=1)
    peer = Raw(server)
    peer.login(server)
    assert peer.command("RETR 1") == b"-ERR message was deleted by another client\r\n"
    assert peer.command("RETR 2").startswith(b"+OK")  # times=1: nothing else is removed
    assert unstuff(peer.multi()) == MESSAGES[1]
    peer.close()
    assert calls == [(1, "1")]
    assert [raw for _, raw in server.mailbox] == MESSAGES[1:]


def test_on_command_counts_sessions_and_clear_faults_forgets_it(server: FakePop3Server) -> None:
    calls: list[tuple[str, int]] = []
    server.on_command("GREETING", lambda session, arg: calls.append(("GREETING", session)))
    server.on_command("NOOP", lambda session, arg: calls.append(("NOOP", session)))
    server.fail_command("NOOP", times=1)  # the callback runs before a scripted answer too
    for _ in range(2):
        client = login(server)
        with contextlib.suppress(poplib.error_proto):
            client.noop()
        client.quit()
    assert calls == [("GREETING", 1), ("NOOP", 1), ("GREETING", 2), ("NOOP", 2)]
    server.clear_faults()
    login(server).quit()
    assert len(calls) == 4
    with pytest.raises(ValueError, match="times"):
        server.on_command("NOOP", lambda session, arg: None, times=0)


# -- robustness and lifecycle -----------------------------------------------------------


def test_a_client_dropping_mid_retr_does_not_make_stop_raise() -> None:
    srv = FakePop3Server([large_attachment_message(8_000_000)]).start()
    peer = Raw(srv)
    peer.login(srv)
    peer.send("RETR 1")
    peer.sock.recv(1000)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a RST, mid-message
    wait_for(lambda: not server_is_locked(srv))
    srv.stop()
    assert srv.deleted == []


def test_stop_with_idle_clients_connected_returns_quickly(server: FakePop3Server) -> None:
    idle = [Raw(server) for _ in range(3)]
    logged_in = login(server)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    for peer in idle:
        peer.close()
    logged_in.close()


def test_stop_reraises_what_a_server_thread_hit() -> None:
    def broken(session: int, arg: str) -> None:
        raise ZeroDivisionError("bug in the fake server")

    srv = FakePop3Server().start()
    srv.on_command("NOOP", broken)  # runs in the session's thread, as NOOP arrives
    client = login(srv)
    client.sock.sendall(b"NOOP\r\n")
    wait_for(lambda: srv.sessions == 1 and not server_is_locked(srv))
    with pytest.raises(ZeroDivisionError, match="bug in the fake server"):
        srv.stop()
    client.close()
    srv.stop()  # the error is reported once


def test_start_only_once_and_stop_is_idempotent() -> None:
    srv = FakePop3Server()
    srv.stop()  # never started: nothing to do
    with srv:
        assert srv.port > 0
        with pytest.raises(RuntimeError, match="only once"):
            srv.start()
    srv.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)


def test_sessions_and_commands_span_sessions(server: FakePop3Server) -> None:
    for _ in range(3):
        login(server).quit()
    assert server.sessions == 3
    assert server.commands == ["USER user", "PASS secret", "QUIT"] * 3


def test_the_fake_server_never_imports_the_client_codec() -> None:
    """A bug shared by client and fake server would hide: DESIGN.md, layout."""
    package = Path(popvault.testing.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith("popvault.pop3")], path


# -- helpers ---------------------------------------------------------------------------


def server_is_locked(srv: FakePop3Server) -> bool:
    return srv.holds_lock
