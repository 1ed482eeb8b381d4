"""TOP n 0 against a real, independent server: the private Dovecot."""

from __future__ import annotations

import pytest

from dovecot import DovecotMailbox, DovecotServer
from popvault.pop3.client import Pop3Client
from popvault.testing import sample_messages

MESSAGES = sample_messages(36, seed=8)


def header_section(raw: bytes) -> bytes:
    """Up to and including the first empty line, found line by line."""
    out = b""
    for line in raw.splitlines(keepends=True):
        out += line
        if line == b"\r\n":
            return out
    return out


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "one-by-one"])
def test_dovecot_sends_each_header_section_and_its_empty_line(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, pipeline: bool
) -> None:
    for raw in MESSAGES:
        dovecot_mailbox.deliver(raw)
    with Pop3Client(
        dovecot.host,
        dovecot.tls_port,
        security="tls",
        timeout=20,
        ca_file=dovecot.ca_file,
        account="dovecot",
        pipeline=pipeline,
    ) as client:
        client.connect()
        client.login(dovecot_mailbox.username, dovecot_mailbox.password)
        assert client.pipelining is pipeline
        replies = list(client.top_headers_many(range(1, len(MESSAGES) + 1)))
        single = client.top_headers(len(MESSAGES))
        sizes = dict(client.list())
        client.quit()
    headers = [reply.headers for reply in replies]
    assert headers == [header_section(raw) for raw in MESSAGES]
    assert single == headers[-1]
    # LIST counts the message as sent (CRLF), so the body is what is left after TOP.
    for number, (raw, header) in enumerate(zip(MESSAGES, headers, strict=True), 1):
        assert header is not None
        body = raw[len(header) :]
        assert sizes[number] - len(header) in (len(body), len(body) + 2)  # + a final CRLF
