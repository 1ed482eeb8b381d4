"""The client's TOP n 0 (RFC 1939 section 7): one header section, or many pipelined.

Against the fake server, which answers TOP with its own encoder; how many TOPs
were in flight at once is the fake server's observation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popvault.errors import LocalProtocolError, RemoteProtocolError, ServerError
from popvault.pop3.client import MAX_HEADER_SECTION, Pop3Client, TopHeaders
from popvault.testing import FakePop3Server, sample_messages
from popvault.testing.fake_server import DEFAULT_CAPABILITIES

PASSWORD = "top-Pa55word-never-shown"
NO_PIPELINING = [c for c in DEFAULT_CAPABILITIES if c != "PIPELINING"]
NO_TOP = [c for c in DEFAULT_CAPABILITIES if c != "TOP"]
MESSAGES = sample_messages(24, seed=12)


def header_section(raw: bytes) -> bytes:
    """Everything up to and including the first empty line (all of ``raw`` without one).

    Written here line by line, independently of the fake server's splitter.
    """
    out = b""
    for line in raw.splitlines(keepends=True):
        out += line
        if line in (b"\r\n", b"\n"):
            return out
    return out if out.endswith(b"\n") else out + b"\r\n"  # the server ends the last line


def logged_in(srv: FakePop3Server, *, pipeline: bool = True) -> Pop3Client:
    client = Pop3Client(
        srv.host, srv.port, security="plain", timeout=5.0, account="acct", pipeline=pipeline
    )
    client.connect()
    client.login("alice", PASSWORD, allow_plaintext=True)
    return client


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def server(request: pytest.FixtureRequest) -> Iterator[FakePop3Server]:
    capabilities = None if request.param else NO_PIPELINING
    with FakePop3Server(
        MESSAGES, username="alice", password=PASSWORD, capabilities=capabilities
    ) as srv:
        yield srv


def test_top_headers_gives_each_header_section_and_sends_no_retr(
    server: FakePop3Server,
) -> None:
    with logged_in(server) as client:
        got = [client.top_headers(number) for number in range(1, len(MESSAGES) + 1)]
        client.quit()
    assert got == [header_section(raw) for _, raw in server.mailbox]
    assert not [line for line in server.commands if line.startswith("RETR")]


def test_top_headers_many_equals_one_at_a_time(server: FakePop3Server) -> None:
    numbers = list(range(1, len(MESSAGES) + 1))
    with logged_in(server) as client:
        singles = [client.top_headers(number) for number in numbers]
        many = list(client.top_headers_many(numbers, depth=5))
        client.quit()
    assert [reply.number for reply in many] == numbers
    assert [reply.headers for reply in many] == singles
    assert all(reply.error is None for reply in many)


def test_top_headers_many_pipelines_only_when_offered(server: FakePop3Server) -> None:
    numbers = list(range(1, len(MESSAGES) + 1))
    with logged_in(server) as client:
        pipelining = client.pipelining
        list(client.top_headers_many(numbers, depth=8))
        client.quit()
    in_flight = server.max_in_flight_by_verb["TOP"]
    # The window is topped up once half of it has drained: never more than depth.
    assert (1 < in_flight <= 8) if pipelining else in_flight == 1


def test_pipeline_false_sends_one_top_at_a_time() -> None:
    with FakePop3Server(MESSAGES, username="alice", password=PASSWORD) as srv:
        with logged_in(srv, pipeline=False) as client:
            assert len(list(client.top_headers_many(range(1, 10)))) == 9
            client.quit()
        assert srv.max_in_flight_by_verb["TOP"] == 1


_FIELD_NAME = st.text(alphabet="abcXYZ-.", min_size=1, max_size=8)
_VALUE = st.text(alphabet="ab .:\t=?", max_size=20)
_FIELD = st.builds(lambda name, value: f"{name}: {value}".encode(), _FIELD_NAME, _VALUE)
# Body lines include "." and ".." alone: TOP n 0 must send none of them.
_BODY_LINE = st.sampled_from([b".", b"..", b".x", b"body", b"", b"From: not a header"])


@st.composite
def _messages(draw: st.DrawFn) -> list[bytes]:
    count = draw(st.integers(1, 6))
    out = []
    for _ in range(count):
        # A header line may start with a dot (a field name may hold one, RFC 5322
        # section 3.6.8) or be folded: dot-stuffing must round-trip through TOP.
        fields = draw(st.lists(st.one_of(_FIELD, st.just(b" folded.")), min_size=1, max_size=6))
        body = draw(st.lists(_BODY_LINE, max_size=5))
        out.append(b"\r\n".join([*fields, b"", *body]) + b"\r\n")
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_messages(), depth=st.integers(1, 4))
def test_any_header_section_round_trips_through_pipelined_top(
    messages: list[bytes], depth: int
) -> None:
    with (
        FakePop3Server(messages, username="alice", password=PASSWORD) as srv,
        logged_in(srv) as client,
    ):
        many = list(client.top_headers_many(range(1, len(messages) + 1), depth=depth))
        client.quit()
    assert [reply.headers for reply in many] == [header_section(raw) for raw in messages]


def test_one_refused_top_leaves_the_others(server: FakePop3Server) -> None:
    server.fail_command("TOP", "-ERR [SYS/TEMP] try later", arg="3 0")
    with logged_in(server) as client:
        replies = list(client.top_headers_many(range(1, 7), depth=4))
        assert client.stat()[0] == len(MESSAGES)  # the session is still in step
        client.quit()
    refused = [reply for reply in replies if reply.error is not None]
    assert [reply.number for reply in refused] == [3]
    assert refused[0].headers is None
    assert refused[0].error is not None
    assert refused[0].error.account == "acct"
    assert [r.headers for r in replies if r.number != 3] == [
        header_section(raw)
        for number, (_, raw) in enumerate(server.mailbox, 1)
        if number in {1, 2, 4, 5, 6}
    ]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
def test_a_server_without_top_is_named_with_its_words(pipelining: bool) -> None:
    capabilities = NO_TOP if pipelining else [c for c in NO_PIPELINING if c != "TOP"]
    with FakePop3Server(
        MESSAGES, username="alice", password=PASSWORD, capabilities=capabilities
    ) as srv:
        srv.fail_command("TOP", "-ERR unknown command TOP")
        with logged_in(srv) as client:
            with pytest.raises(ServerError) as single:
                client.top_headers(1)
            with pytest.raises(ServerError) as many:
                list(client.top_headers_many(range(1, 9)))
            assert client.stat()[0] == len(MESSAGES)  # every reply in flight was read
            client.quit()
    for info in (single, many):
        text = str(info.value)
        assert text.startswith("account 'acct': ")
        assert "'-ERR unknown command TOP'" in text
        assert "does not support TOP" in text


def test_a_refusal_from_a_server_that_lists_top_is_no_missing_top() -> None:
    with FakePop3Server(MESSAGES, username="alice", password=PASSWORD) as srv:
        srv.fail_command("TOP", "-ERR no such message", arg="1 0")
        with logged_in(srv) as client:
            with pytest.raises(ServerError) as info:
                client.top_headers(1)
            first = next(client.top_headers_many([1, 2]))
            client.quit()
    assert "does not support TOP" not in str(info.value)
    assert first.error is not None
    assert "does not support TOP" not in str(first.error)


def test_leaving_early_keeps_the_session_in_step(server: FakePop3Server) -> None:
    with logged_in(server) as client:
        replies = client.top_headers_many(range(1, len(MESSAGES) + 1), depth=16)
        first = next(replies)
        replies.close()  # up to 15 replies are still due: read and dropped
        assert client.stat()[0] == len(MESSAGES)
        assert client.top_headers(2) == header_section(server.mailbox[1][1])
        client.quit()
    assert first == TopHeaders(1, header_section(server.mailbox[0][1]), None)


def _endless_header() -> Iterator[bytes]:
    yield b"+OK top of message follows\r\n"
    while True:
        yield b"X-Filler: " + b"f" * 1000 + b"\r\n"


def test_a_header_section_past_the_bound_is_refused_not_held() -> None:
    with FakePop3Server(MESSAGES, username="alice", password=PASSWORD) as srv:
        srv.stream_reply("TOP", _endless_header)
        client = logged_in(srv)
        with pytest.raises(RemoteProtocolError, match=f"passes {MAX_HEADER_SECTION} octets"):
            client.top_headers(1)
        with pytest.raises(LocalProtocolError, match="not connected"):
            client.stat()  # dropped: the stream is out of step
        client = logged_in(srv)
        with pytest.raises(RemoteProtocolError) as info:
            list(client.top_headers_many([1, 2, 3], limit=4096))
        assert info.value.account == "acct"
        with pytest.raises(LocalProtocolError, match="not connected"):
            client.stat()


@given(value=st.integers(0, 3000), slack=st.integers(-2, 2))
@settings(max_examples=30, deadline=None)
def test_the_bound_is_exact(value: int, slack: int) -> None:
    # A header section of n octets passes a limit of n and fails n - 1.
    header = b"X: " + b"v" * value + b"\r\n\r\n"
    limit = max(1, len(header) + slack)
    with (
        FakePop3Server([header + b"body\r\n"], username="alice", password=PASSWORD) as srv,
        logged_in(srv) as client,
    ):
        if len(header) <= limit:
            assert client.top_headers(1, limit=limit) == header
        else:
            with pytest.raises(RemoteProtocolError):
                client.top_headers(1, limit=limit)
