"""The blocking client against the fake server and against scripted sockets."""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripted_server import ScriptedServer, login_prelude, read_line

from dovecot import TlsCerts
from popvault.errors import (
    AuthError,
    ConnectError,
    InUseError,
    LocalProtocolError,
    LoginDelayError,
    LoginRefused,
    Pop3Error,
    Pop3Timeout,
    ReadError,
    RemoteProtocolError,
    SecurityPolicyError,
    ServerError,
    TemporaryError,
    TLSError,
)
from popvault.pop3.client import READ_BLOCK, Pop3Client
from popvault.pop3.tls import make_client_context
from popvault.testing import FakePop3Server

PASSWORD = "hunter2-Pa55word-never-shown"
ACCOUNT = "acct"
MESSAGES = [
    b"Subject: one\r\n\r\nhello\r\n",
    b"Subject: two\r\n\r\n.starts with a dot\r\n.\r\n..\r\nend\r\n",
    b"Subject: three\r\n\r\n" + b"x" * 5000 + b"\r\n",
]


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(MESSAGES, username="alice", password=PASSWORD) as srv:
        yield srv


def plain_client(host: str, port: int, *, timeout: float = 5.0) -> Pop3Client:
    return Pop3Client(host, port, security="plain", timeout=timeout, account=ACCOUNT)


def logged_in(srv: FakePop3Server, *, timeout: float = 5.0) -> Pop3Client:
    client = plain_client(srv.host, srv.port, timeout=timeout)
    client.connect()
    client.login("alice", PASSWORD, allow_plaintext=True)
    return client


# -- the ordinary session -------------------------------------------------------


def test_listing_and_retrieving(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        assert client.greeting
        assert "UIDL" in client.capabilities
        assert client.stat() == (3, sum(map(len, MESSAGES)))
        assert [uid for _, uid in client.uidl()] == [uid for uid, _ in server.mailbox]
        assert client.list() == [(n + 1, len(raw)) for n, raw in enumerate(MESSAGES)]
        for number, raw in enumerate(MESSAGES, start=1):
            sink = io.BytesIO()
            assert client.retr_into(number, sink) == len(raw)
            assert sink.getvalue() == raw
        client.noop()


def test_deletions_happen_only_at_quit(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        client.dele(1)
    assert server.deleted == []  # __exit__ closed without QUIT
    assert "QUIT" not in server.commands
    client = logged_in(server)
    client.dele(1)
    client.rset()
    client.dele(2)
    client.quit()
    assert server.deleted == [server.deleted[0]]
    assert len(server.mailbox) == 2
    client.close()  # idempotent after quit
    client.close()


def test_apop_login(server: FakePop3Server) -> None:
    client = plain_client(server.host, server.port)
    client.connect()
    client.login("alice", PASSWORD, method="apop", allow_plaintext=True)
    assert not any(PASSWORD in line for line in server.commands)
    assert client.stat()[0] == 3
    client.close()


def test_apop_needs_a_timestamp() -> None:
    with FakePop3Server(MESSAGES, apop_timestamp=None) as srv:
        client = plain_client(srv.host, srv.port)
        client.connect()
        with pytest.raises(SecurityPolicyError, match="timestamp") as info:
            client.login("user", "secret", method="apop", allow_plaintext=True)
        assert info.value.account == ACCOUNT
        client.close()


def test_bare_lf_server(server: FakePop3Server) -> None:
    server.bare_lf = True
    with logged_in(server) as client:
        assert client.stat()[0] == 3
        sink = io.BytesIO()
        client.retr_into(2, sink)
        assert sink.getvalue() == MESSAGES[1].replace(b"\r\n", b"\n")


def test_server_without_capa(server: FakePop3Server) -> None:
    server.no_capa = True
    with logged_in(server) as client:
        assert client.capabilities == {}
        assert len(client.uidl()) == 3


def test_duplicate_uids_are_passed_on_for_the_caller_to_handle() -> None:
    with FakePop3Server(MESSAGES[:2], uidls=["same", "same"], password=PASSWORD) as srv:
        client = plain_client(srv.host, srv.port)
        client.connect()
        client.login("user", PASSWORD, allow_plaintext=True)
        assert client.uidl() == [(1, "same"), (2, "same")]
        client.quit()


# -- security policy --------------------------------------------------------------


def test_plaintext_login_is_refused(server: FakePop3Server) -> None:
    client = plain_client(server.host, server.port)
    client.connect()
    assert not client.is_secure
    with pytest.raises(SecurityPolicyError, match="without TLS") as info:
        client.login("alice", PASSWORD)
    assert info.value.account == ACCOUNT
    assert not any(line.upper().startswith(("USER", "PASS")) for line in server.commands)
    client.login("alice", PASSWORD, allow_plaintext=True)  # the session is still usable
    client.close()


def test_starttls_refused_when_not_offered(server: FakePop3Server) -> None:
    client = Pop3Client(server.host, server.port, security="starttls", timeout=5, account=ACCOUNT)
    with pytest.raises(SecurityPolicyError, match="STLS") as info:
        client.connect()
    assert info.value.account == ACCOUNT
    assert not client.is_secure
    assert not any(line.upper().startswith(("STLS", "USER")) for line in server.commands)
    with pytest.raises(LocalProtocolError):
        client.stat()  # the connection was dropped


def test_stls_upgrade(tls_certs: TlsCerts) -> None:
    with FakePop3Server(
        MESSAGES, stls_context=tls_certs.server_context(), password=PASSWORD
    ) as srv:
        client = Pop3Client(
            srv.host,
            srv.port,
            security="starttls",
            timeout=5,
            ca_file=tls_certs.ca_file,
            account="a",
        )
        client.connect()
        assert client.is_secure
        client.login("user", PASSWORD)
        assert "STLS" not in client.capabilities
        sink = io.BytesIO()
        client.retr_into(2, sink)
        assert sink.getvalue() == MESSAGES[1]
        client.quit()
        assert srv.commands.count("STLS") == 1


def test_implicit_tls_verifies_the_certificate(tls_certs: TlsCerts) -> None:
    with FakePop3Server(MESSAGES, tls_context=tls_certs.server_context()) as srv:
        untrusting = Pop3Client(srv.host, srv.port, security="tls", timeout=5, account=ACCOUNT)
        with pytest.raises(TLSError, match="failed verification") as info:
            untrusting.connect()
        assert info.value.account == ACCOUNT
        trusting = Pop3Client(
            srv.host, srv.port, security="tls", timeout=5, ca_file=tls_certs.ca_file
        )
        trusting.connect()
        assert trusting.is_secure
        trusting.login("user", "secret")
        assert trusting.stat()[0] == 3
        trusting.close()


def test_client_context_verifies(tls_certs: TlsCerts) -> None:
    context = make_client_context(tls_certs.ca_file)
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert make_client_context(None).get_ca_certs() is not None


def test_missing_ca_file_is_a_tls_error(server: FakePop3Server, tmp_path: Path) -> None:
    client = Pop3Client(
        server.host, server.port, security="tls", timeout=5, ca_file=tmp_path / "none.pem"
    )
    with pytest.raises(TLSError, match="CA file"):
        client.connect()


def test_data_injected_after_stls_is_refused() -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(b"+OK ready\r\n")
        read_line(conn)  # CAPA
        conn.sendall(b"+OK\r\nSTLS\r\n.\r\n")
        read_line(conn)  # STLS
        conn.sendall(b"+OK go ahead\r\n+OK injected\r\n")
        read_line(conn)

    with ScriptedServer(handler) as srv:
        client = Pop3Client(srv.host, srv.port, security="starttls", timeout=5)
        with pytest.raises(RemoteProtocolError, match="after accepting STLS"):
            client.connect()
        assert not client.is_secure


# -- -ERR mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "response", "cls", "code"),
    [
        ("PASS", "-ERR [AUTH] invalid login", AuthError, "AUTH"),
        # The fake server announces RESP-CODES and AUTH-RESP-CODE: without [AUTH]
        # a refused login is not about the credentials (RFC 3206 section 6).
        ("PASS", "-ERR go away", LoginRefused, None),
        ("USER", "-ERR unknown", LoginRefused, None),
        ("PASS", "-ERR message is damaged", LoginRefused, None),
        ("PASS", "-ERR [IN-USE] mailbox locked", InUseError, "IN-USE"),
        ("PASS", "-ERR [LOGIN-DELAY] wait 900s", LoginDelayError, "LOGIN-DELAY"),
        ("PASS", "-ERR [SYS/TEMP] try later", TemporaryError, "SYS/TEMP"),
        ("PASS", "-ERR [SYS/PERM] broken", LoginRefused, "SYS/PERM"),
        ("RETR", "-ERR [SYS/TEMP/DISK] later", TemporaryError, "SYS/TEMP/DISK"),
        ("RETR", "-ERR no such message", ServerError, None),
        ("STAT", "-ERR [UTF8] whatever", ServerError, "UTF8"),
    ],
)
def test_err_codes_map_to_classes(
    server: FakePop3Server, verb: str, response: str, cls: type[ServerError], code: str | None
) -> None:
    server.fail_command(verb, response)
    client = plain_client(server.host, server.port)
    client.connect()
    with pytest.raises(ServerError) as info:
        _login_then(client, verb)
    error = info.value
    assert type(error) is cls
    assert error.code == code
    assert error.account == ACCOUNT
    assert verb in str(error)
    assert response.rsplit("] ", maxsplit=1)[-1].removeprefix("-ERR ") in str(error)
    assert PASSWORD not in str(error)
    client.close()


@pytest.mark.parametrize(
    ("capabilities", "cls", "certain"),
    [
        (("USER", "UIDL"), AuthError, False),
        (("USER", "UIDL", "RESP-CODES"), LoginRefused, None),
        (("USER", "UIDL", "AUTH-RESP-CODE"), LoginRefused, None),
    ],
)
@pytest.mark.parametrize("verb", ["USER", "PASS"])
def test_a_plain_login_refusal_depends_on_whether_the_server_announces_codes(
    capabilities: tuple[str, ...], cls: type[ServerError], certain: bool | None, verb: str
) -> None:
    with FakePop3Server(capabilities=capabilities) as srv:
        srv.fail_command(verb, "-ERR message is damaged")
        client = plain_client(srv.host, srv.port)
        client.connect()
        with pytest.raises(ServerError) as info:
            client.login("alice", PASSWORD, allow_plaintext=True)
        client.close()
    error = info.value
    assert type(error) is cls
    text = str(error)
    assert "'-ERR message is damaged'" in text  # the server's words, quoted
    if isinstance(error, AuthError):
        assert error.certain is certain
        assert "cannot tell a wrong password from a problem on the server" in text
    assert "refused the credentials" not in text


def test_auth_code_is_certain_about_the_credentials(server: FakePop3Server) -> None:
    client = plain_client(server.host, server.port)
    client.connect()
    with pytest.raises(AuthError) as info:
        client.login("alice", "wrong", allow_plaintext=True)
    client.close()
    assert info.value.certain
    assert str(info.value).startswith(f"account {ACCOUNT!r}: the server refused the credentials")


def test_a_missing_response_code_is_logged_as_nothing(
    server: FakePop3Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail_command("STAT", "-ERR no code here")
    caplog.set_level(logging.DEBUG, logger="popvault.pop3")
    with logged_in(server) as client, pytest.raises(ServerError):
        client.stat()
    lines = [r.getMessage() for r in caplog.records if "-ERR" in r.getMessage()]
    assert any(line.endswith("S: -ERR no code here") for line in lines), lines
    assert not any("None" in line for line in lines)


def _login_then(client: Pop3Client, verb: str) -> None:
    client.login("alice", PASSWORD, allow_plaintext=True)
    if verb == "RETR":
        client.retr_into(1, io.BytesIO())
    else:
        client.stat()


def test_err_leaves_the_session_usable(server: FakePop3Server) -> None:
    server.fail_command("RETR", "-ERR no such message", arg="9")
    with logged_in(server) as client:
        with pytest.raises(ServerError):
            client.retr_into(9, io.BytesIO())
        assert client.stat()[0] == 3


def test_wrong_password(server: FakePop3Server) -> None:
    client = plain_client(server.host, server.port)
    client.connect()
    with pytest.raises(AuthError) as info:
        client.login("alice", "not-" + PASSWORD, allow_plaintext=True)
    assert "PASS ***" in str(info.value)
    client.close()


def test_second_session_is_in_use(server: FakePop3Server) -> None:
    with logged_in(server), plain_client(server.host, server.port) as second:
        second.connect()
        with pytest.raises(InUseError, match="locked"):
            second.login("alice", PASSWORD, allow_plaintext=True)


# -- transport faults ----------------------------------------------------------------


def test_connect_refused_names_host_and_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    client = plain_client("127.0.0.1", port)
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}") as info:
        client.connect()
    assert info.value.account == ACCOUNT


def test_timeout_on_a_hanging_server(server: FakePop3Server) -> None:
    server.hang_on("RETR", after_octets=100)
    client = logged_in(server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Pop3Timeout, match="RETR 3") as info:
        client.retr_into(3, io.BytesIO())
    assert time.monotonic() - started < 5
    assert info.value.account == ACCOUNT
    with pytest.raises(LocalProtocolError):
        client.noop()  # dropped: a late reply must not be taken for the next one
    assert server.deleted == []


def test_timeout_waiting_for_the_greeting(server: FakePop3Server) -> None:
    server.hang_on("GREETING")
    client = plain_client(server.host, server.port, timeout=0.3)
    with pytest.raises(Pop3Timeout):
        client.connect()


def test_connection_cut_mid_retr_is_a_read_error() -> None:
    big = b"Subject: big\r\n\r\n" + b"0123456789" * 30_000 + b"\r\n"
    with FakePop3Server([big], password=PASSWORD) as srv:
        srv.cut_after(100_000)  # past login, inside the 300 kB body
        client = plain_client(srv.host, srv.port)
        client.connect()
        client.login("user", PASSWORD, allow_plaintext=True)
        sink = io.BytesIO()
        with pytest.raises(ReadError, match="closed the connection during the reply to RETR 1"):
            client.retr_into(1, sink)
        assert 0 < len(sink.getvalue()) < len(big)


def test_a_failing_sink_drops_the_connection(server: FakePop3Server) -> None:
    class Full(io.RawIOBase):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    client = logged_in(server)
    with pytest.raises(OSError, match="No space"):
        client.retr_into(1, Full())
    with pytest.raises(LocalProtocolError):
        client.stat()


# -- awkward bytes ----------------------------------------------------------------------


def _serve_body(wire_pieces: list[bytes]) -> ScriptedServer:
    def handler(conn: socket.socket) -> None:
        login_prelude(conn)
        read_line(conn)  # RETR 1
        for piece in wire_pieces:
            conn.sendall(piece)
            time.sleep(0.005)  # let each piece arrive on its own
        read_line(conn)  # until the client hangs up

    return ScriptedServer(handler)


def test_body_split_at_every_awkward_point() -> None:
    wire = b"+OK\r\nA: b\r\n\r\n..dot\r\n...\r\nmid\r\n..\r\nlast\r\n.\r\n"
    awkward = [
        i for i in range(1, len(wire)) if wire[i - 1 : i + 1] in (b"\r\n", b"\n.", b"..", b".\r")
    ]
    edges = [0, *awkward, len(wire)]
    pieces = [wire[a:b] for a, b in itertools.pairwise(edges)]
    with _serve_body(pieces) as srv:
        client = plain_client(srv.host, srv.port)
        client.connect()
        client.login("u", "p", allow_plaintext=True)
        sink = io.BytesIO()
        client.retr_into(1, sink)
        client.close()
    assert sink.getvalue() == b"A: b\r\n\r\n.dot\r\n..\r\nmid\r\n.\r\nlast\r\n"


class _Digest:
    """A sink that keeps only a hash, a count and the largest chunk it was given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.largest = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.largest = max(self.largest, len(data))
        return len(data)


def _stream_one_line(octets: int) -> tuple[int, _Digest, int]:
    line = b"a" * octets
    body = line + b"\r\n"

    def handler(conn: socket.socket) -> None:
        login_prelude(conn)
        read_line(conn)
        conn.sendall(b"+OK\r\n")
        view = memoryview(body)
        for start in range(0, len(view), 1 << 16):
            conn.sendall(view[start : start + (1 << 16)])
        conn.sendall(b".\r\n")
        read_line(conn)

    sink = _Digest()
    with ScriptedServer(handler) as srv:
        client = plain_client(srv.host, srv.port, timeout=30)
        client.connect()
        client.login("u", "p", allow_plaintext=True)
        tracemalloc.start()
        try:
            written = client.retr_into(1, sink)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        client.close()
    assert sink.hash.digest() == hashlib.sha256(body).digest()
    return written, sink, peak


def test_a_three_megabyte_line() -> None:
    written, sink, peak = _stream_one_line(3 * 1024 * 1024)
    assert written == 3 * 1024 * 1024 + 2
    assert sink.largest <= READ_BLOCK  # chunks of at most one socket read
    assert peak < 2 * 1024 * 1024  # well under the line's size: nothing buffers it whole


@pytest.mark.slow
def test_memory_stays_flat_for_a_hundred_megabytes() -> None:
    written, _, peak = _stream_one_line(100 * 1024 * 1024)
    assert written == 100 * 1024 * 1024 + 2
    assert peak < 2 * 1024 * 1024


# -- secrets ------------------------------------------------------------------------------


def test_password_never_in_errors_or_logs(
    server: FakePop3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="popvault.pop3")
    server.fail_command("PASS", f"-ERR [AUTH] bad password {PASSWORD}", times=1)
    client = plain_client(server.host, server.port)
    client.connect()
    with pytest.raises(AuthError) as info:
        client.login("alice", PASSWORD, allow_plaintext=True)
    client.login("alice", PASSWORD, allow_plaintext=True)
    client.quit()
    texts = [str(info.value), repr(info.value), *map(str, info.value.args)]
    texts += [record.getMessage() for record in caplog.records]
    assert any("PASS ***" in text for text in texts)
    assert not [text for text in texts if PASSWORD in text]


def test_every_pop3_error_carries_the_account(server: FakePop3Server) -> None:
    server.cut_after(10)
    client = plain_client(server.host, server.port)
    with pytest.raises(Pop3Error) as info:
        client.connect()
    assert info.value.account == ACCOUNT
    assert str(info.value).startswith(f"account {ACCOUNT!r}")


def test_exit_never_quits(server: FakePop3Server) -> None:
    done = threading.Event()
    with logged_in(server) as client:
        client.dele(1)
        done.set()
    assert done.is_set()
    assert not client.is_secure
    assert "QUIT" not in server.commands
    assert server.deleted == []


# -- UTF8 (RFC 6856) ---------------------------------------------------------------


def test_utf8_is_sent_before_the_login_when_offered() -> None:
    with FakePop3Server(capabilities=("USER", "UIDL", "UTF8")) as srv:
        client = plain_client(srv.host, srv.port)
        client.connect()
        client.login(srv.username, srv.password, allow_plaintext=True)
        assert client.utf8
        client.close()
        commands = [line.split(" ")[0] for line in srv.commands]
    # RFC 6856 section 3: UTF8 belongs to the AUTHORIZATION state, before USER.
    assert commands.index("UTF8") < commands.index("USER")


def test_utf8_is_not_sent_to_a_server_that_does_not_offer_it(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        assert not client.utf8
    assert not any(line.upper().startswith("UTF8") for line in server.commands)


def test_a_refused_utf8_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="popvault.pop3")
    with FakePop3Server(capabilities=("USER", "UIDL", "UTF8 USER")) as srv:
        srv.fail_command("UTF8", "-ERR not today")
        client = plain_client(srv.host, srv.port)
        client.connect()
        client.login(srv.username, srv.password, allow_plaintext=True)
        assert not client.utf8
        assert client.stat()[0] == 0
        client.close()
    assert any("refused it" in r.getMessage() for r in caplog.records)


def test_apop_over_plain_names_what_it_exposes(server: FakePop3Server) -> None:
    client = plain_client(server.host, server.port)
    client.connect()
    with pytest.raises(SecurityPolicyError) as info:
        client.login("alice", PASSWORD, method="apop")
    client.close()
    assert "MD5 digest of the password" in str(info.value)
    assert "unencrypted" not in str(info.value)
