"""Bounded memory: endless CAPA, UIDL and LIST replies end in RemoteProtocolError, memory small.

The endless replies come from FakePop3Server.stream_reply; the bounds are the
core's (DEFAULT_LISTING_BOUNDS), or smaller ones passed to Pop3Client where the
default would take a two-million-line listing to reach.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from dovecot import TlsCerts
from popvault.errors import LocalProtocolError, RemoteProtocolError
from popvault.pop3 import DEFAULT_LISTING_BOUNDS, MAX_LISTING_LINE, ListingBounds
from popvault.pop3.client import Pop3Client
from popvault.testing import FakePop3Server

ACCOUNT = "acct"
MESSAGES = [b"Subject: one\r\n\r\nhello\r\n", b"Subject: two\r\n\r\nworld\r\n"]
MB = 1024 * 1024


def endless_lines(line: Callable[[int], bytes]) -> Callable[[], Iterator[bytes]]:
    """A stream: ``+OK`` and then ``line(n)`` for n = 1, 2, ... for ever, 1000 a chunk."""

    def chunks() -> Iterator[bytes]:
        yield b"+OK here it comes\r\n"
        for start in itertools.count(1, 1000):
            yield b"".join(line(n) for n in range(start, start + 1000))

    return chunks


def one_endless_line() -> Iterator[bytes]:
    yield b"+OK\r\n"
    while True:
        yield b"X" * 65536


endless_capa = endless_lines(lambda n: b"X-CAPABILITY-%d argument\r\n" % n)
endless_uidl = endless_lines(lambda n: b"%d uid-%d\r\n" % (n, n))
endless_list = endless_lines(lambda n: b"%d %d\r\n" % (n, 1000 + n))


def peak_of(action: Callable[[], object]) -> tuple[BaseException, int]:
    """Run ``action``, which must fail; what it raised and the peak traced memory."""
    tracemalloc.start()
    try:
        action()
    except BaseException as exc:  # returned for the test to check
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("the endless reply did not fail")


def client_for(
    srv: FakePop3Server, listing_bounds: dict[str, ListingBounds] | None = None
) -> Pop3Client:
    return Pop3Client(
        srv.host,
        srv.port,
        security="plain",
        timeout=10,
        account=ACCOUNT,
        listing_bounds=listing_bounds,
    )


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        (endless_capa, "the CAPA listing has more than 1000 lines"),
        (one_endless_line, f"a line of the CAPA listing exceeds {MAX_LISTING_LINE} octets"),
    ],
)
def test_an_endless_capa_fails_within_its_bound(
    stream: Callable[[], Iterator[bytes]], match: str
) -> None:
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply("CAPA", stream)
        client = client_for(srv)
        error, peak = peak_of(client.connect)
        assert isinstance(error, RemoteProtocolError), error
        assert match in str(error)
        assert error.account == ACCOUNT
        assert peak < 20 * MB  # the CAPA bound is 64 KiB; nothing piles up
        with pytest.raises(LocalProtocolError):
            client.stat()  # the connection was dropped


def test_an_endless_capa_before_stls_is_bounded_too(tls_certs: TlsCerts) -> None:
    # RFC 2595: with security="starttls" the first CAPA is read in clear text,
    # before STLS, so anyone on the network path can send it.
    with FakePop3Server(MESSAGES, stls_context=tls_certs.server_context()) as srv:
        srv.stream_reply("CAPA", endless_capa)
        client = Pop3Client(
            srv.host,
            srv.port,
            security="starttls",
            timeout=10,
            ca_file=tls_certs.ca_file,
            account=ACCOUNT,
        )
        error, peak = peak_of(client.connect)
        assert isinstance(error, RemoteProtocolError), error
        assert "the CAPA listing has more than 1000 lines" in str(error)
        assert peak < 20 * MB
        assert not client.is_secure
        assert "STLS" not in srv.commands


def test_the_capa_after_stls_is_bounded(tls_certs: TlsCerts) -> None:
    with FakePop3Server(MESSAGES, stls_context=tls_certs.server_context()) as srv:
        srv.on_command("STLS", lambda session, arg: srv.stream_reply("CAPA", endless_capa))
        client = Pop3Client(
            srv.host,
            srv.port,
            security="starttls",
            timeout=10,
            ca_file=tls_certs.ca_file,
            account=ACCOUNT,
        )
        error, peak = peak_of(client.connect)
        assert isinstance(error, RemoteProtocolError), error
        assert "the CAPA listing has more than 1000 lines" in str(error)
        assert srv.commands == ["CAPA", "STLS", "CAPA"]
        assert peak < 20 * MB


# A UIDL bound small enough to reach quickly; the client holds what it parses
# (~150 octets an entry), so 50,000 lines stay well under the 20 MB limit.
SMALL = ListingBounds(max_lines=50_000, max_octets=4 * MB, max_line=MAX_LISTING_LINE)


@pytest.mark.parametrize(
    ("verb", "stream", "call"),
    [("UIDL", endless_uidl, Pop3Client.uidl), ("LIST", endless_list, Pop3Client.list)],
)
def test_an_endless_listing_fails_at_its_line_bound(
    verb: str, stream: Callable[[], Iterator[bytes]], call: Callable[[Pop3Client], object]
) -> None:
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply(verb, stream)
        client = client_for(srv, listing_bounds={verb: SMALL})
        client.connect()
        client.login("user", "secret", allow_plaintext=True)
        error, peak = peak_of(lambda: call(client))
        assert isinstance(error, RemoteProtocolError), error
        assert f"the {verb} listing has more than 50000 lines" in str(error)
        assert error.account == ACCOUNT
        assert peak < 20 * MB
        with pytest.raises(LocalProtocolError):
            client.noop()


def test_an_endless_uidl_of_long_lines_fails_at_its_octet_bound() -> None:
    bounds = ListingBounds(max_lines=10**6, max_octets=2 * MB, max_line=MAX_LISTING_LINE)
    stream = endless_lines(lambda n: b"%d %s\r\n" % (n, b"u" * 250))
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply("UIDL", stream)
        client = client_for(srv, listing_bounds={"UIDL": bounds})
        client.connect()
        client.login("user", "secret", allow_plaintext=True)
        error, peak = peak_of(client.uidl)
        assert isinstance(error, RemoteProtocolError), error
        assert f"the UIDL listing exceeds {2 * MB} octets" in str(error)
        assert peak < 20 * MB


def test_an_endless_uidl_line_fails_at_the_default_line_bound() -> None:
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply("UIDL", one_endless_line)
        client = client_for(srv)
        client.connect()
        client.login("user", "secret", allow_plaintext=True)
        error, peak = peak_of(client.uidl)
        assert isinstance(error, RemoteProtocolError), error
        assert f"a line of the UIDL listing exceeds {MAX_LISTING_LINE} octets" in str(error)
        assert peak < 20 * MB
        assert DEFAULT_LISTING_BOUNDS["UIDL"].max_line == MAX_LISTING_LINE


def test_uidl_lines_streams_raw_lines_and_leaving_early_drops_the_connection() -> None:
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply("UIDL", endless_uidl)
        client = client_for(srv)
        client.connect()
        client.login("user", "secret", allow_plaintext=True)
        lines = client.uidl_lines()
        assert list(itertools.islice(lines, 3)) == [b"1 uid-1", b"2 uid-2", b"3 uid-3"]
        lines.close()  # the rest of the listing is unread: the stream is out of step
        with pytest.raises(LocalProtocolError):
            client.noop()


def test_uidl_lines_hands_over_lines_the_parser_would_refuse() -> None:
    # One bad line is the caller's to judge (skip it, or fail): the core passes it on.
    bad = b"2 " + b"u" * 1000
    with FakePop3Server(MESSAGES) as srv:
        reply = b"+OK\r\n1 good\r\n" + bad + b"\r\n3 \xff\x00\r\n.\r\n"
        srv.stream_reply("UIDL", lambda: iter([reply]), times=2)
        client = client_for(srv)
        client.connect()
        client.login("user", "secret", allow_plaintext=True)
        assert list(client.uidl_lines()) == [b"1 good", bad, b"3 \xff\x00"]
        with pytest.raises(RemoteProtocolError, match="bad unique-id"):
            client.uidl()  # the listing as a whole still refuses it, for now
