"""FakePop3Server against independent peers: stdlib poplib and raw sockets."""

from __future__ import annotations

import ast
import hashlib
import poplib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import popvault.testing
from dovecot import TlsCerts
from popvault.testing import FakePop3Server, _session, large_attachment_message

MESSAGES = [
    b"Subject: one\r\n\r\nfirst body\r\n",
    b"Subject: two\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    b"Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\nno final newline",
]
TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(MESSAGES) as srv:
        yield srv


def login(srv: FakePop3Server) -> poplib.POP3:
    client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
    client.user(srv.username)
    client.pass_(srv.password)
    return client


class Raw:
    """A bare-socket POP3 peer: sends what it is told, reads octets as they come."""

    def __init__(self, srv: FakePop3Server, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.buf = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(line.encode() + b"\r\n" for line in lines))

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def multi(self) -> bytes:
        """Octets of a multi-line body, terminator included, as sent."""
        out = b""
        while not out.endswith(b"\r\n.\r\n") and out != b".\r\n":
            out += self.line()
        return out

    def until_closed(self) -> bytes:
        out, self.buf = self.buf, b""
        while data := self.sock.recv(65536):
            out += data
        return out

    def login(self, srv: FakePop3Server) -> None:
        self.line()
        self.send(f"USER {srv.username}", f"PASS {srv.password}")
        assert self.line().startswith(b"+OK")
        assert self.line().startswith(b"+OK")

    def close(self) -> None:
        self.sock.close()


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


def test_stop_reraises_what_a_server_thread_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: _session.Session, arg: str) -> bytes:
        raise ZeroDivisionError("bug in the fake server")

    monkeypatch.setitem(_session._COMMANDS, "NOOP", (broken, _session._TRANS))
    srv = FakePop3Server().start()
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
    return srv._holder is not None


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
