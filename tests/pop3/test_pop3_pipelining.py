"""The client's pipelined commands (RFC 2449 section 6.6): RETR windows, DELE batches, login.

Against the fake server, which answers pipelined commands in order like a real
one; whether commands were really in flight together is the fake server's
observation (tests/test_pipelining_fake.py), here it is the replies that count.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popvault.errors import LocalProtocolError, ServerError
from popvault.pop3.client import Pop3Client
from popvault.testing import FakePop3Server, sample_messages
from popvault.testing.fake_server import DEFAULT_CAPABILITIES

PASSWORD = "hunter2-Pa55word-never-shown"
NO_PIPELINING = [c for c in DEFAULT_CAPABILITIES if c != "PIPELINING"]
MESSAGES = sample_messages(12, seed=21)


def served(raw: bytes) -> bytes:
    """A message as RETR hands it out: the fake server, like Dovecot, ends it with CRLF."""
    return raw if raw.endswith(b"\n") else raw + b"\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def server(request: pytest.FixtureRequest) -> Iterator[FakePop3Server]:
    capabilities = None if request.param else NO_PIPELINING
    with FakePop3Server(
        MESSAGES, username="alice", password=PASSWORD, capabilities=capabilities
    ) as srv:
        yield srv


def logged_in(srv: FakePop3Server) -> Pop3Client:
    client = Pop3Client(srv.host, srv.port, security="plain", timeout=5.0, account="acct")
    client.connect()
    client.login("alice", PASSWORD, allow_plaintext=True)
    return client


def retrieve_all(
    client: Pop3Client, numbers: list[int], *, depth: int, octets: int
) -> dict[int, bytes | ServerError]:
    sizes = dict(client.list())
    got: dict[int, bytes | ServerError] = {}
    for retrieval in client.retrieve(
        ((number, sizes[number]) for number in numbers), depth=depth, octets=octets
    ):
        if retrieval.error is not None:
            got[retrieval.number] = retrieval.error
            continue
        sink = io.BytesIO()
        retrieval.read_into(sink)
        got[retrieval.number] = sink.getvalue()
    return got


def test_every_body_arrives_whole_and_in_order(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        numbers = list(range(1, len(MESSAGES) + 1))
        got = retrieve_all(client, numbers, depth=5, octets=1 << 20)
        assert list(got) == numbers
        assert [got[n] for n in numbers] == [served(raw) for _, raw in server.mailbox]
        client.quit()
    assert server.commands[-1] == "QUIT"


def test_one_refused_retr_inside_a_window_leaves_the_others(server: FakePop3Server) -> None:
    server.fail_command("RETR", "-ERR [SYS/TEMP] try later", arg="4")
    with logged_in(server) as client:
        got = retrieve_all(client, list(range(1, 9)), depth=8, octets=1 << 20)
        refusal = got.pop(4)
        assert isinstance(refusal, ServerError)
        assert "try later" in refusal.text
        assert got == {n: served(server.mailbox[n - 1][1]) for n in got}
        client.noop()  # still in step


def test_the_login_and_the_listings_are_answered_in_order(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        client.prefetch_listings()
        uidls = list(client.uidl_lines())
        sizes = list(client.list_lines())
        assert [line.split()[1].decode() for line in uidls] == [u for u, _ in server.mailbox]
        assert len(sizes) == len(MESSAGES)
        assert client.capabilities


def test_a_refused_login_is_refused_also_when_pipelined(server: FakePop3Server) -> None:
    client = Pop3Client(server.host, server.port, security="plain", timeout=5.0, account="a")
    with client:
        client.connect()
        with pytest.raises(ServerError):
            client.login("alice", "wrong-password", allow_plaintext=True)


def test_the_body_must_be_read_before_the_next_reply(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        retrievals = client.retrieve([(1, 10), (2, 10)], depth=2, octets=1 << 20)
        next(retrievals)
        with pytest.raises(LocalProtocolError, match="not read"):
            next(retrievals)


def test_window_bounds_must_be_positive(server: FakePop3Server) -> None:
    with logged_in(server) as client, pytest.raises(ValueError, match="positive"):
        next(client.retrieve([(1, 10)], depth=0, octets=10))


def test_dele_many_reports_each_refusal_and_keeps_the_rest(server: FakePop3Server) -> None:
    server.fail_command("DELE", "-ERR no such message", arg="3")
    with logged_in(server) as client:
        outcomes = client.dele_many([1, 2, 3, 4], depth=3)
        assert [outcome is None for outcome in outcomes] == [True, True, False, True]
        client.quit()
    assert len(server.mailbox) == len(MESSAGES) - 3


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    depth=st.integers(min_value=1, max_value=20),
    octets=st.integers(min_value=1, max_value=40_000),
    refused=st.sets(st.integers(min_value=1, max_value=len(MESSAGES)), max_size=4),
    stop_after=st.integers(min_value=0, max_value=len(MESSAGES)),
)
def test_any_window_gives_every_reply_to_its_own_command(
    server: FakePop3Server, depth: int, octets: int, refused: set[int], stop_after: int
) -> None:
    # The general rule: whatever the window and wherever RETRs fail, each reply
    # is its own message's, and a retrieval that stops asking still ends in step.
    server.clear_faults()
    for number in refused:
        server.fail_command("RETR", "-ERR refused", arg=str(number))
    wanted = list(range(1, stop_after + 1))
    with logged_in(server) as client:
        got = retrieve_all(client, wanted, depth=depth, octets=octets)
        assert list(got) == wanted
        for number, reply in got.items():
            if number in refused:
                assert isinstance(reply, ServerError)
            else:
                assert reply == served(server.mailbox[number - 1][1])
        client.noop()
        client.quit()
