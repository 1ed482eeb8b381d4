"""The client against a real, independent POP3 server: a private Dovecot."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from dovecot import DovecotMailbox, DovecotServer
from popvault.errors import AuthError, SecurityPolicyError, TLSError
from popvault.pop3.client import Pop3Client

MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nhello\r\n",
    b"From: b@example.org\r\nSubject: dots\r\n\r\n.starts with a dot\r\n.\r\n..\r\nend\r\n",
    b"From: c@example.org\r\nSubject: long\r\n\r\n" + b"y" * 3_000_000 + b"\r\n",
]


@pytest.fixture(scope="module")
def shared_mailbox(dovecot: DovecotServer) -> DovecotMailbox:
    # One user for the module: Dovecot notices a new passwd-file line only when the
    # file's mtime second changes, so users added in quick succession can be unknown
    # to it (see the report); fewer additions, fewer chances.
    return dovecot.add_user()


@pytest.fixture
def mailbox(shared_mailbox: DovecotMailbox) -> Iterator[DovecotMailbox]:
    shared_mailbox.clear()
    yield shared_mailbox
    shared_mailbox.clear()


def tls_client(server: DovecotServer, **options: object) -> Pop3Client:
    return Pop3Client(
        server.host,
        server.tls_port,
        security="tls",
        timeout=10,
        ca_file=server.ca_file,
        account="dovecot",
        **options,  # type: ignore[arg-type]
    )


def test_implicit_tls_fails_verification_without_the_ca(dovecot: DovecotServer) -> None:
    client = Pop3Client(dovecot.host, dovecot.tls_port, security="tls", timeout=10, account="x")
    with pytest.raises(TLSError, match="failed verification") as info:
        client.connect()
    assert info.value.account == "x"
    assert not client.is_secure


def test_implicit_tls_with_the_ca(dovecot: DovecotServer, mailbox: DovecotMailbox) -> None:
    for raw in MESSAGES:
        mailbox.deliver(raw)
    with tls_client(dovecot) as client:
        client.connect()
        assert client.is_secure
        client.login(mailbox.username, mailbox.password)
        assert "UIDL" in client.capabilities
        assert client.stat() == (3, sum(map(len, MESSAGES)))
        uids = client.uidl()
        assert [n for n, _ in uids] == [1, 2, 3]
        assert len({uid for _, uid in uids}) == 3
        assert client.list() == [(n, len(raw)) for n, raw in enumerate(MESSAGES, start=1)]
        for number, raw in enumerate(MESSAGES, start=1):
            sink = io.BytesIO()
            assert client.retr_into(number, sink) == len(raw)
            assert sink.getvalue() == raw


def test_stls_upgrade(dovecot: DovecotServer, mailbox: DovecotMailbox) -> None:
    mailbox.deliver(MESSAGES[1])
    client = Pop3Client(
        dovecot.host, dovecot.port, security="starttls", timeout=10, ca_file=dovecot.ca_file
    )
    client.connect()
    assert client.is_secure
    assert "STLS" not in client.capabilities
    client.login(mailbox.username, mailbox.password)
    sink = io.BytesIO()
    client.retr_into(1, sink)
    assert sink.getvalue() == MESSAGES[1]
    client.quit()


def test_stls_fails_verification_without_the_ca(dovecot: DovecotServer) -> None:
    client = Pop3Client(dovecot.host, dovecot.port, security="starttls", timeout=10)
    with pytest.raises(TLSError, match="failed verification"):
        client.connect()


def test_plain_login_is_refused_by_us(dovecot: DovecotServer) -> None:
    with Pop3Client(dovecot.host, dovecot.port, security="plain", timeout=10) as client:
        client.connect()
        assert "STLS" in client.capabilities
        with pytest.raises(SecurityPolicyError):
            client.login("nobody", "irrelevant")


def test_wrong_password(dovecot: DovecotServer, mailbox: DovecotMailbox) -> None:
    with tls_client(dovecot) as client:
        client.connect()
        with pytest.raises(AuthError) as info:
            client.login(mailbox.username, "wrong-" + mailbox.password)
        assert info.value.account == "dovecot"
        assert "wrong-" not in str(info.value)


def test_deletion_only_at_quit(dovecot: DovecotServer, mailbox: DovecotMailbox) -> None:
    for raw in MESSAGES[:2]:
        mailbox.deliver(raw)
    with tls_client(dovecot) as client:
        client.connect()
        client.login(mailbox.username, mailbox.password)
        client.dele(1)
    assert len(mailbox.messages()) == 2  # dropped without QUIT: nothing deleted
    with tls_client(dovecot) as client:
        client.connect()
        client.login(mailbox.username, mailbox.password)
        client.dele(1)
        client.quit()
    assert mailbox.messages() == [MESSAGES[1]]
