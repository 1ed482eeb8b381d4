"""FakePop3Server's scripted replies: stream_reply (endless, dripping) and reply_with (echo).

Checked with a bare socket (fake_client.Raw), not popvault.pop3: a bug shared
by the client and the fake server would cancel out.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fake_client import Raw, wait_for

from popvault.testing import FakePop3Server

MESSAGES = [b"Subject: one\r\n\r\nfirst body\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
TEN_MB = 10 * 1024 * 1024


def endless_uidl() -> Iterator[bytes]:
    """``+OK`` and then ``n uidn`` lines for ever, a thousand lines a chunk."""
    yield b"+OK endless listing follows\r\n"
    for start in itertools.count(1, 1000):
        yield b"".join(b"%d uid%d\r\n" % (n, n) for n in range(start, start + 1000))


def drip(*lines: bytes) -> Iterator[bytes]:
    yield from lines


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(MESSAGES) as srv:
        yield srv


@pytest.fixture
def raw(server: FakePop3Server) -> Iterator[Raw]:
    peer = Raw(server)
    yield peer
    peer.close()


def arrival_times(raw: Raw, count: int) -> list[float]:
    """When each of the next ``count`` lines arrived (monotonic seconds)."""
    times = []
    for _ in range(count):
        raw.line()
        times.append(time.monotonic())
    return times


# -- stream_reply: endless -----------------------------------------------------------------


def test_an_endless_stream_really_is_endless(server: FakePop3Server, raw: Raw) -> None:
    server.stream_reply("UIDL", endless_uidl)
    raw.login(server)
    assert raw.command("UIDL") == b"+OK endless listing follows\r\n"
    received, expected = 0, 1
    while received < TEN_MB:  # 10 MB of it, far past any real UIDL listing of this box
        line = raw.line()
        assert line == b"%d uid%d\r\n" % (expected, expected)
        received += len(line)
        expected += 1
    assert expected > 500_000
    raw.close()
    # The client left mid-reply: the session ends (its lock goes) and stop() is clean.
    wait_for(lambda: not server.holds_lock)


def test_each_reply_gets_a_fresh_iterator_and_times_limits_it(server: FakePop3Server) -> None:
    server.stream_reply("NOOP", lambda: drip(b"+OK ", b"streamed\r\n"), times=2)
    raw = Raw(server)
    raw.login(server)
    assert raw.command("NOOP") == b"+OK streamed\r\n"
    assert raw.command("NOOP") == b"+OK streamed\r\n"
    assert raw.command("NOOP") == b"+OK\r\n"  # used up: the real reply again
    raw.close()


def test_a_stream_that_ends_lets_the_session_go_on(server: FakePop3Server, raw: Raw) -> None:
    server.stream_reply("UIDL", lambda: drip(b"+OK\r\n", b"1 x\r\n", b".\r\n"))
    raw.login(server)
    raw.send("UIDL", "STAT")  # the second command waits while the stream is sent
    assert raw.line() == b"+OK\r\n"
    assert raw.multi() == b"1 x\r\n.\r\n"
    assert raw.line() == b"+OK 2 %d\r\n" % sum(map(len, MESSAGES))


def test_a_stream_is_sent_exactly_as_produced(server: FakePop3Server, raw: Raw) -> None:
    # No dot-stuffing, no CRLF added, no bare_lf rewriting: the test scripts the octets.
    server.bare_lf = True
    server.stream_reply("CAPA", lambda: drip(b"+OK\r\n", b".hidden\r\n", b"no end"))
    raw.line()  # the greeting (bare LF, as the quirk says)
    raw.send("CAPA")
    assert raw.line() == b"+OK\r\n"
    assert raw.line() == b".hidden\r\n"
    raw.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        raw.line()  # "no end" has no line end, and the session waits for a command
    assert raw.buf == b"no end"


def test_cut_after_applies_to_a_stream(server: FakePop3Server, raw: Raw) -> None:
    greeting = raw.line()
    server.cut_after(len(greeting) + 1000)  # octets a session sends, greeting included
    server.stream_reply("CAPA", endless_uidl)
    raw.send("CAPA")
    assert len(raw.until_closed()) == 1000


def test_stream_reply_checks_its_arguments(server: FakePop3Server) -> None:
    with pytest.raises(ValueError, match="delay"):
        server.stream_reply("UIDL", endless_uidl, delay=-1)
    with pytest.raises(ValueError, match="times"):
        server.stream_reply("UIDL", endless_uidl, times=0)


def test_stream_reply_only_for_the_argument_given(server: FakePop3Server, raw: Raw) -> None:
    server.stream_reply("LIST", lambda: drip(b"+OK 2 1\r\n"), arg="2")
    raw.login(server)
    assert raw.command("LIST 1") == b"+OK 1 %d\r\n" % len(MESSAGES[0])
    assert raw.command("LIST 2") == b"+OK 2 1\r\n"


# -- stream_reply: dripping ----------------------------------------------------------------


def test_a_dripping_reply_sends_each_chunk_after_its_delay(
    server: FakePop3Server, raw: Raw
) -> None:
    delay = 0.2
    lines = (b"+OK\r\n", b"1 a\r\n", b"2 b\r\n", b".\r\n")
    server.stream_reply("UIDL", lambda: drip(*lines), delay=delay)
    raw.login(server)
    sent = time.monotonic()
    raw.send("UIDL")
    times = arrival_times(raw, len(lines))
    gaps = [b - a for a, b in itertools.pairwise([sent, *times])]
    assert all(gap >= delay * 0.9 for gap in gaps), gaps
    assert times[-1] - sent < delay * len(lines) + 2.0  # dripping, not hanging
    assert raw.command("NOOP") == b"+OK\r\n"


def test_a_greeting_dripped_one_octet_at_a_time() -> None:
    greeting = b"+OK slow greeting\r\n"
    delay = 0.02
    with FakePop3Server(MESSAGES) as srv:
        srv.stream_reply("GREETING", lambda: (bytes([o]) for o in greeting), delay=delay)
        started = time.monotonic()
        raw = Raw(srv)
        assert raw.line() == greeting
        assert time.monotonic() - started >= delay * len(greeting) * 0.9
        raw.send(f"USER {srv.username}", f"PASS {srv.password}")
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"+OK maildrop locked")
        raw.close()


def test_a_drip_stops_soon_after_the_client_closes(server: FakePop3Server, raw: Raw) -> None:
    closed = threading.Event()

    def endless_drip() -> Iterator[bytes]:
        try:
            yield b"+OK\r\n"
            yield from (b"%d u%d\r\n" % (n, n) for n in itertools.count(1))
        finally:
            closed.set()

    server.stream_reply("UIDL", endless_drip, delay=0.05)
    raw.login(server)
    raw.send("UIDL")
    arrival_times(raw, 3)
    raw.close()
    # The next sends fail; the session ends and closes the iterator.
    assert closed.wait(5)
    wait_for(lambda: not server.holds_lock)


def test_stop_wakes_a_waiting_drip_at_once() -> None:
    srv = FakePop3Server(MESSAGES).start()
    srv.stream_reply("UIDL", lambda: drip(b"+OK\r\n"), delay=60)
    raw = Raw(srv)
    raw.login(srv)
    raw.send("UIDL")
    wait_for(lambda: "UIDL" in srv.commands)
    started = time.monotonic()
    srv.stop()  # raises if a session thread failed or did not end
    assert time.monotonic() - started < 5
    raw.close()


def test_stop_wakes_a_stream_blocked_on_a_client_that_does_not_read() -> None:
    srv = FakePop3Server(MESSAGES).start()
    srv.stream_reply("UIDL", endless_uidl)
    raw = Raw(srv)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.login(srv)
    raw.send("UIDL")
    time.sleep(0.3)  # the socket buffers fill; the server blocks in send
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 5
    raw.close()


# -- reply_with: echoes ----------------------------------------------------------------


def test_reply_with_echoes_the_argument_as_received(server: FakePop3Server, raw: Raw) -> None:
    server.reply_with("PASS", "+OK PASSWORD-WAS {arg}")
    raw.line()
    assert raw.command("USER user").startswith(b"+OK")
    assert raw.command("PASS pass with  spaces") == b"+OK PASSWORD-WAS pass with  spaces\r\n"
    # Not carried out: the session is still in AUTHORIZATION.
    assert raw.command("STAT").startswith(b"-ERR STAT not allowed")


def test_reply_with_carry_out_logs_in_and_replaces_only_the_reply(
    server: FakePop3Server, raw: Raw
) -> None:
    server.reply_with("PASS", "+OK PASSWORD-WAS {arg}", carry_out=True)
    raw.line()
    raw.command(f"USER {server.username}")
    echoed = raw.command(f"PASS {server.password}")
    assert echoed == f"+OK PASSWORD-WAS {server.password}\r\n".encode()
    assert raw.command("STAT").startswith(b"+OK 2 ")
    assert server.holds_lock


def test_reply_with_can_quote_the_servers_credentials(server: FakePop3Server, raw: Raw) -> None:
    server.reply_with("UIDL", "-ERR cannot open mailbox for {username}:{password} {other}")
    raw.login(server)
    expected = f"-ERR cannot open mailbox for {server.username}:{server.password} {{other}}\r\n"
    assert raw.command("UIDL") == expected.encode()
    assert raw.command("UIDL 1").startswith(b"-ERR cannot open")  # until cleared
    server.clear_faults()
    assert raw.command("UIDL 1").startswith(b"+OK 1 ")


def test_reply_with_times_arg_and_the_greeting() -> None:
    with FakePop3Server(MESSAGES) as srv:
        srv.reply_with("GREETING", "+OK hello{arg}", times=1)
        srv.reply_with("RETR", "-ERR no {arg} today", arg="2")
        raw = Raw(srv)
        assert raw.line() == b"+OK hello\r\n"
        raw.send(f"USER {srv.username}", f"PASS {srv.password}")
        raw.line()
        raw.line()
        assert raw.command("RETR 2") == b"-ERR no 2 today\r\n"
        assert raw.command("RETR 1").startswith(b"+OK")
        raw.multi()
        raw.close()
        again = Raw(srv)
        assert again.line().startswith(b"+OK popvault fake")  # times=1 used up
        again.close()
        with pytest.raises(ValueError, match="times"):
            srv.reply_with("PASS", "x", times=0)


def test_the_first_rule_added_answers(server: FakePop3Server, raw: Raw) -> None:
    server.fail_command("NOOP", "-ERR first", times=1)
    server.reply_with("NOOP", "+OK second {arg}", times=1)
    server.stream_reply("NOOP", lambda: drip(b"+OK third\r\n"), times=1)
    raw.login(server)
    assert [raw.command("NOOP") for _ in range(4)] == [
        b"-ERR first\r\n",
        b"+OK second \r\n",
        b"+OK third\r\n",
        b"+OK\r\n",
    ]


def test_clear_faults_forgets_streams_and_echoes(server: FakePop3Server, raw: Raw) -> None:
    server.stream_reply("UIDL", endless_uidl)
    server.reply_with("NOOP", "-ERR {arg}")
    server.clear_faults()
    raw.login(server)
    assert raw.command("NOOP") == b"+OK\r\n"
    assert raw.command("UIDL").startswith(b"+OK unique-id")
