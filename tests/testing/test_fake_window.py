"""FakePop3Server(window=N): a server that hands out its mailbox N messages at a time (Gmail).

Each session lists only the N oldest messages not yet *downloaded*; a message
is downloaded once a session that RETRed it ends with QUIT. Checked with
poplib, not popvault.pop3: a bug shared by the client and the fake server
would cancel out.
"""

from __future__ import annotations

import poplib
from collections.abc import Iterator

import pytest

from popvault.testing import FakePop3Server

MESSAGES = [f"Subject: {i}\r\n\r\nbody of message {i}\r\n".encode() for i in range(7)]


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(MESSAGES, window=3) as srv:
        yield srv


def session(srv: FakePop3Server) -> poplib.POP3:
    client = poplib.POP3(srv.host, srv.port, timeout=5)
    client.user(srv.username)
    client.pass_(srv.password)
    return client


def listed(client: poplib.POP3) -> list[str]:
    """The session's UIDLs in message order."""
    _, lines, _ = client.uidl()
    return [line.split()[1].decode() for line in lines]


def capabilities(client: poplib.POP3) -> list[str]:
    """The CAPA lines, as poplib reads them."""
    return [" ".join([name, *args]) for name, args in client.capa().items()]


def test_each_session_lists_the_window_oldest_messages_numbered_from_one(server) -> None:
    uidls = [uidl for uidl, _ in server.mailbox]
    client = session(server)
    assert client.stat() == (3, sum(len(raw) for raw in MESSAGES[:3]))
    assert listed(client) == uidls[:3]
    _, lines, _ = client.list()
    assert [line.split()[0] for line in lines] == [b"1", b"2", b"3"]
    assert client.retr(1)[1] == MESSAGES[0].rstrip(b"\r\n").split(b"\r\n")
    client.quit()
    assert [uidl for uidl, _ in server.offered] == [uidls[1], uidls[2], uidls[3]]


def test_retrieved_messages_are_downloaded_at_quit_and_the_window_moves_on(server) -> None:
    uidls = [uidl for uidl, _ in server.mailbox]
    client = session(server)
    for number in (1, 2, 3):
        client.retr(number)
    assert server.downloaded == [], "nothing counts before QUIT"
    client.quit()
    assert server.downloaded == uidls[:3]
    client = session(server)
    assert listed(client) == uidls[3:6]
    client.retr(3)  # the window's last one only
    client.quit()
    assert server.downloaded == [*uidls[:3], uidls[5]]
    assert [uidl for uidl, _ in server.offered] == [uidls[3], uidls[4], uidls[6]]
    assert len(server.mailbox) == len(MESSAGES), "downloaded messages stay on the server"


def test_a_session_dropped_without_quit_downloads_nothing(server) -> None:
    uidls = [uidl for uidl, _ in server.mailbox]
    client = session(server)
    for number in (1, 2, 3):
        client.retr(number)
    client.close()  # no QUIT: Gmail keeps offering what this session retrieved
    client = session(server)
    assert listed(client) == uidls[:3]
    client.quit()
    assert server.downloaded == []


def test_top_is_not_a_download(server) -> None:
    client = session(server)
    client.top(1, 0)
    client.quit()
    assert server.downloaded == []
    assert len(server.offered) == 3


def test_dele_and_quit_still_remove_messages(server) -> None:
    uidls = [uidl for uidl, _ in server.mailbox]
    client = session(server)
    client.retr(1)
    client.dele(1)
    client.dele(2)  # deleted without being retrieved
    client.quit()
    assert server.deleted == uidls[:2]
    assert [uidl for uidl, _ in server.mailbox] == uidls[2:]
    assert server.downloaded == uidls[:1]
    assert [uidl for uidl, _ in server.offered] == uidls[2:5]


def test_the_whole_mailbox_drains_window_by_window(server) -> None:
    seen: list[str] = []
    while True:
        client = session(server)
        window = listed(client)
        assert len(window) <= 3
        for number in range(1, len(window) + 1):
            client.retr(number)
        client.quit()
        if not window:
            break
        seen += window
    assert seen == [uidl for uidl, _ in server.mailbox]
    assert server.downloaded == seen
    assert server.sessions == 4  # 3 + 3 + 1, then an empty one


def test_a_message_added_later_joins_the_queue_behind_the_older_ones(server) -> None:
    late = server.add_message(b"Subject: late\r\n\r\nlate\r\n")
    assert late not in [uidl for uidl, _ in server.offered]
    client = session(server)
    for number in (1, 2, 3):
        client.retr(number)
    client.quit()
    for _ in range(2):
        client = session(server)
        for number in range(1, len(listed(client)) + 1):
            client.retr(number)
        client.quit()
    assert [uidl for uidl, _ in server.offered] == []
    assert server.downloaded[-1] == late


def test_capa_says_expire_0_with_a_window_and_expire_never_without() -> None:
    with FakePop3Server(MESSAGES, window=250) as srv:
        client = session(srv)
        assert "EXPIRE 0" in capabilities(client)
        client.quit()
    with FakePop3Server(MESSAGES) as srv:
        client = session(srv)
        assert "EXPIRE NEVER" in capabilities(client)
        client.quit()
    with FakePop3Server(MESSAGES, window=2, capabilities=("UIDL", "USER")) as srv:
        client = session(srv)
        assert capabilities(client) == ["UIDL", "USER"], "given capabilities are kept as they are"
        client.quit()


def test_without_a_window_downloads_are_noted_but_everything_stays_on_offer() -> None:
    with FakePop3Server(MESSAGES) as srv:
        client = session(srv)
        client.retr(2)
        client.quit()
        assert srv.downloaded == [srv.mailbox[1][0]]
        assert srv.offered == srv.mailbox
        client = session(srv)
        assert client.stat()[0] == len(MESSAGES)
        client.quit()


@pytest.mark.parametrize("window", [0, -1, True])
def test_a_window_must_be_at_least_one(window: int) -> None:
    with pytest.raises(ValueError, match="window must be at least 1"):
        FakePop3Server(MESSAGES, window=window)
