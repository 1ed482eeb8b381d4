"""The private Dovecot fixture: logins over plain, STLS and implicit TLS; delivery."""

from __future__ import annotations

import poplib
import socket
import ssl

import pytest

import dovecot as dovecot_support
from dovecot import DovecotMailbox, DovecotServer
from popvault.testing import sample_messages

TIMEOUT = 10.0


def whole(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def plain_login(server: DovecotServer, box: DovecotMailbox) -> poplib.POP3:
    client = poplib.POP3(server.host, server.port, timeout=TIMEOUT)
    client.user(box.username)
    client.pass_(box.password)
    return client


def test_plain_login_and_retr_gives_back_the_crlf_bytes(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    raw = b"From: a@example.org\r\nSubject: hi\r\n\r\n.dot line\r\n.\r\nbody\r\n"
    dovecot_mailbox.deliver(raw)
    client = plain_login(dovecot, dovecot_mailbox)
    assert client.stat() == (1, len(raw))
    assert whole(client.retr(1)[1]) == raw
    client.quit()


def test_stls_verifies_against_the_generated_ca(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=TIMEOUT)
    assert "STLS" in client.capa()
    client.stls(ssl.create_default_context(cafile=str(dovecot.ca_file)))
    assert isinstance(client.sock, ssl.SSLSocket)
    client.user(dovecot_mailbox.username)
    assert client.pass_(dovecot_mailbox.password).startswith(b"+OK")
    client.quit()


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_implicit_tls_verifies_against_the_generated_ca(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, hostname: str
) -> None:
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = poplib.POP3_SSL(hostname, dovecot.tls_port, context=context, timeout=TIMEOUT)
    client.user(dovecot_mailbox.username)
    assert client.pass_(dovecot_mailbox.password).startswith(b"+OK")
    client.quit()


def test_implicit_tls_is_refused_without_the_ca(dovecot: DovecotServer) -> None:
    context = ssl.create_default_context()  # system trust only: our CA is not in it
    with (
        socket.create_connection((dovecot.host, dovecot.tls_port), timeout=TIMEOUT) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(sock, server_hostname="localhost")


def test_apop_login(dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox) -> None:
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=TIMEOUT)
    assert client.apop(dovecot_mailbox.username, dovecot_mailbox.password).startswith(b"+OK")
    client.quit()


def test_a_wrong_password_is_refused(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=TIMEOUT)
    client.user(dovecot_mailbox.username)
    with pytest.raises(poplib.error_proto, match="AUTH"):
        client.pass_("not the password")
    client.quit()


def test_every_sample_comes_back_intact(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = sample_messages()
    for raw in samples:
        dovecot_mailbox.deliver(raw)
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)  # the samples exceed poplib's 2048
    client = plain_login(dovecot, dovecot_mailbox)
    assert client.stat()[0] == len(samples)
    for number, raw in enumerate(samples, 1):
        expected = raw if raw.endswith(b"\r\n") else raw + b"\r\n"
        assert whole(client.retr(number)[1]) == expected, number
    client.quit()


def test_messages_dele_and_clear(dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox) -> None:
    first, second = b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\ntwo\r\n"
    dovecot_mailbox.deliver(first)
    dovecot_mailbox.deliver(second)
    assert dovecot_mailbox.messages() == [first, second]
    client = plain_login(dovecot, dovecot_mailbox)
    uidls = client.uidl()[1]
    client.dele(1)
    client.quit()
    assert dovecot_mailbox.messages() == [second]
    client = plain_login(dovecot, dovecot_mailbox)
    assert client.uidl()[1] == [b"1 " + uidls[1].split()[1]]  # UIDLs are stable
    client.quit()
    dovecot_mailbox.clear()
    assert dovecot_mailbox.messages() == []
    client = plain_login(dovecot, dovecot_mailbox)
    assert client.stat() == (0, 0)
    client.quit()


def test_users_are_separate(dovecot: DovecotServer) -> None:
    alice = dovecot.add_user("alice-sep", "pw-alice")
    bob = dovecot.add_user()
    alice.deliver(b"Subject: for alice\r\n\r\nhi\r\n")
    assert bob.messages() == []
    client = plain_login(dovecot, bob)
    assert client.stat() == (0, 0)
    client.quit()
    with pytest.raises(ValueError, match="user names are"):
        dovecot.add_user("bad:name")
    with pytest.raises(ValueError, match="exists already"):
        dovecot.add_user("alice-sep")


def test_the_test_got_the_dovecot_marker(
    request: pytest.FixtureRequest, dovecot: DovecotServer
) -> None:
    assert request.node.get_closest_marker("dovecot") is not None


def test_missing_dovecot_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dovecot_support, "find_dovecot", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        dovecot_support.dovecot_binary_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        dovecot_support.dovecot_binary_or_skip()
