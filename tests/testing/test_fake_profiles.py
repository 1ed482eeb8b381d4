"""Server profiles: each behaves as documented, and each serves a normal mailbox correctly.

The peer is a bare socket (fake_client.Raw) or poplib, never popvault.pop3.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import hashlib
import re
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from fake_client import END, Raw, unstuff, wait_for

from popvault.testing import (
    DEFAULT_CAPABILITIES,
    PROFILES,
    VANISHED_REFUSAL,
    FakePop3Server,
    ServerProfile,
    sample_messages,
    unicode_notice,
)

UTF8_MESSAGE = (
    "From: Jörg Müller <joerg@example.org>\r\n"
    "To: Zoë <zoe@example.org>\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Message-ID: <utf8-1@example.org>\r\n"
    "\r\n"
    "Schöne Grüße.\r\n"
).encode()
# sample_messages cycles through 14 kinds (dots, long lines, no final newline, ...).
MAILBOX = [*sample_messages(14), UTF8_MESSAGE]
SMALL = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
REQUIRED = {
    "default",
    "dovecot-like",
    "utf8-substituting",
    "content-uidl",
    "no-capa",
    "trailing-spaces",
    "bare-err",
    "list-extra-words",
    "no-resp-codes",
    "unlocked-err",
    "unlocked-drop",
    "estimated-sizes",
}


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> ServerProfile:
    chosen: ServerProfile = PROFILES[request.param]
    return chosen


def serving(name: str, messages: list[bytes] = SMALL, **kwargs: object) -> FakePop3Server:
    return PROFILES[name].server(messages, **kwargs)


@pytest.fixture
def raw_peer() -> Iterator[list[Raw]]:
    """Raw peers a test opens; closed at the end."""
    peers: list[Raw] = []
    yield peers
    for peer in peers:
        peer.close()


def connect(srv: FakePop3Server, peers: list[Raw]) -> Raw:
    peer = Raw(srv)
    peers.append(peer)
    return peer


def wire_form(raw: bytes) -> bytes:
    """What RETR carries for a stored message: a CRLF added to an unended last line."""
    return raw if raw.endswith(b"\n") else raw + b"\r\n"


def ok(line: bytes) -> bytes:
    """The text of a +OK status line, trailing spaces and line end removed."""
    assert line.startswith(b"+OK"), line
    return line[len(b"+OK") :].strip()


def listing(peer: Raw) -> list[bytes]:
    """The lines of a multi-line listing, terminator removed."""
    body = peer.multi()
    return [] if body == b".\r\n" else body[: -len(END)].split(b"\r\n")


def capa(peer: Raw) -> list[str] | None:
    """The CAPA lines, or None if the server refuses CAPA."""
    line = peer.command("CAPA")
    if line.startswith(b"-ERR"):
        return None
    ok(line)
    return [entry.decode() for entry in listing(peer)]


def expected_size(profile: ServerProfile, raw: bytes) -> int:
    return len(raw) if profile.list_size is None else profile.list_size(raw)


# -- the general rule: every profile serves a normal mailbox to a correct client ----------


def test_every_required_profile_exists_under_its_name() -> None:
    assert set(PROFILES) >= REQUIRED
    assert next(iter(PROFILES)) == "default"
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert len(profile.description) > 20, name


def test_every_profile_serves_a_whole_session(profile: ServerProfile, raw_peer: list[Raw]) -> None:
    """Log in, STAT, LIST, UIDL, RETR and DELE every message, QUIT: all is as stored."""
    with profile.server(MAILBOX) as srv:
        uidls = [u for u, _ in srv.mailbox]
        peer = connect(srv, raw_peer)
        ok(peer.line())
        lines = capa(peer)
        assert (lines is None) == (not profile.capa)
        if lines is not None and "UTF8" in lines:
            # RFC 6856: a correct client enables UTF-8 mode when offered.
            assert peer.command("UTF8").startswith(b"+OK")
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        sizes = [expected_size(profile, raw) for raw in MAILBOX]
        assert ok(peer.command("STAT")).split() == [b"%d" % len(MAILBOX), b"%d" % sum(sizes)]
        ok(peer.command("LIST"))
        scans = [line.split()[:2] for line in listing(peer)]
        assert scans == [[b"%d" % n, b"%d" % size] for n, size in enumerate(sizes, 1)]
        ok(peer.command("UIDL"))
        assert [line.split()[1].decode() for line in listing(peer)] == uidls
        for number, raw in enumerate(MAILBOX, 1):
            ok(peer.command(f"RETR {number}"))
            assert unstuff(peer.multi()) == wire_form(raw), f"message {number}"
        for number in range(1, len(MAILBOX) + 1):
            ok(peer.command(f"DELE {number}"))
        ok(peer.command("QUIT"))
        assert peer.until_closed() == b""
        assert srv.deleted == uidls
        assert srv.mailbox == []


def test_every_profile_refuses_a_wrong_password_and_a_locked_or_shared_maildrop(
    profile: ServerProfile, raw_peer: list[Raw]
) -> None:
    with profile.server(SMALL) as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        ok(peer.command("USER user"))
        refusal = peer.command("PASS wrong")
        assert refusal.startswith(b"-ERR")
        assert refusal.rstrip(b"\r\n") == (b"-ERR " + profile.login_refusal.encode()).strip()
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        second = connect(srv, raw_peer)
        second.line()
        ok(second.command("USER user"))
        answer = second.command("PASS secret")
        if profile.exclusive_lock:
            assert answer.startswith(b"-ERR")  # RFC 1939 section 4: the maildrop is locked
        else:
            ok(answer)
            assert srv.in_transaction == 2


def test_profiles_are_frozen_and_server_arguments_win() -> None:
    profile = PROFILES["no-resp-codes"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    srv = profile.server(SMALL, username="ann", login_refusal="go away")
    assert (srv.username, srv.login_refusal) == ("ann", "go away")
    assert srv.capabilities == profile.capabilities
    assert [raw for _, raw in srv.mailbox] == SMALL


# -- each profile's quirk -----------------------------------------------------------------


def test_default_is_todays_fake_server(raw_peer: list[Raw]) -> None:
    with serving("default") as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        assert capa(peer) == list(DEFAULT_CAPABILITIES)
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR [AUTH] invalid login\r\n"


def test_dovecot_like_capa_refusal_and_an_unended_last_line(raw_peer: list[Raw]) -> None:
    unended = b"Subject: unended\r\n\r\nlast line"
    with serving("dovecot-like", [unended]) as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        lines = capa(peer)
        assert lines is not None
        for name in ("RESP-CODES", "AUTH-RESP-CODE", "UIDL", "TOP", "PIPELINING"):
            assert name in lines
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR [AUTH] Authentication failed.\r\n"
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        assert peer.command("LIST 1") == f"+OK 1 {len(unended)}\r\n".encode()
        ok(peer.command("RETR 1"))
        assert peer.multi() == unended + b"\r\n.\r\n"  # a CRLF added before the terminator


def notice_parts(data: bytes) -> tuple[EmailMessage, list[EmailMessage]]:
    notice = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(notice, EmailMessage)
    parts = [part for part in notice.iter_parts() if isinstance(part, EmailMessage)]
    return notice, parts


def attached(data: bytes) -> bytes:
    """A notice's base64 attachment, decoded (email parses message/global as a container)."""
    notice, _ = notice_parts(data)
    boundary = notice.get_boundary()
    assert boundary
    sections = data.split(b"--" + boundary.encode())
    assert len(sections) == 4  # preamble, text, attachment, after the close delimiter
    assert sections[3].startswith(b"--")
    head, _, payload = sections[2].partition(b"\r\n\r\n")
    assert b"Content-Transfer-Encoding: base64" in head
    return base64.b64decode(payload)


def test_utf8_substituting_serves_a_new_notice_per_retr_without_utf8(
    raw_peer: list[Raw],
) -> None:
    with serving("utf8-substituting", [SMALL[0], UTF8_MESSAGE]) as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        lines = capa(peer)
        assert lines is not None
        assert "UTF8" in lines
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        assert peer.command("LIST 2") == f"+OK 2 {len(UTF8_MESSAGE)}\r\n".encode()
        bodies = []
        for _ in range(2):
            ok(peer.command("RETR 2"))
            bodies.append(unstuff(peer.multi()))
        ok(peer.command("RETR 1"))
        assert unstuff(peer.multi()) == SMALL[0]  # an all-ASCII header is served as it is
        ok(peer.command("TOP 2 0"))
        assert b"Subject: Cannot display Unicode content\r\n" in peer.multi()
    first, second = bodies
    assert first != second
    assert len(first) >= 1000
    assert len(first) != len(UTF8_MESSAGE)
    assert first.isascii()
    boundaries = []
    for body in bodies:
        notice, parts = notice_parts(body)
        assert notice["From"] == "Mail Delivery Subsystem <MAILER-DAEMON@fake.popvault.test>"
        assert notice["Subject"] == "Cannot display Unicode content"
        assert notice.get_content_type() == "multipart/mixed"
        boundaries.append(notice.get_boundary())
        assert [part.get_content_type() for part in parts] == ["text/plain", "message/global"]
        assert attached(body) == UTF8_MESSAGE  # the original, attached
    assert boundaries[0] != boundaries[1]


def test_utf8_substituting_serves_the_real_message_after_utf8(raw_peer: list[Raw]) -> None:
    with serving("utf8-substituting", [UTF8_MESSAGE]) as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        assert peer.command("UTF8").startswith(b"+OK")
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        ok(peer.command("RETR 1"))
        assert unstuff(peer.multi()) == UTF8_MESSAGE
        assert srv.utf8_sessions == {1: True}


def test_unicode_notice_is_large_even_for_a_tiny_original() -> None:
    tiny = "Subject: é\r\n\r\nx\r\n".encode()
    notice = unicode_notice(tiny)
    assert len(notice) >= 1000
    assert unicode_notice(tiny) != notice
    assert attached(notice) == tiny


def test_content_uidl_shares_a_uidl_between_identical_messages(raw_peer: list[Raw]) -> None:
    same = SMALL[0]
    with serving("content-uidl", [same, SMALL[1], same]) as srv:
        digest = hashlib.md5(same, usedforsecurity=False).hexdigest()
        peer = connect(srv, raw_peer)
        peer.line()
        lines = capa(peer)
        assert lines is not None
        assert not {"RESP-CODES", "AUTH-RESP-CODE"} & set(lines)
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR invalid login\r\n"
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        ok(peer.command("UIDL"))
        uidls = [line.split()[1].decode() for line in listing(peer)]
        assert uidls[0] == uidls[2] == digest != uidls[1]
        assert peer.command("UIDL 3") == f"+OK 3 {digest}\r\n".encode()
        ok(peer.command("DELE 3"))
        ok(peer.command("QUIT"))
        wait_for(lambda: srv.deleted != [])
        assert srv.deleted == [digest]
        assert [raw for _, raw in srv.mailbox] == [same, SMALL[1]]  # one copy stays


def test_no_capa_refuses_capa_and_sends_no_codes(raw_peer: list[Raw]) -> None:
    with serving("no-capa") as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        assert peer.command("CAPA") == b"-ERR unknown command\r\n"
        assert peer.command("UTF8") == b"-ERR unknown command\r\n"
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR invalid login\r\n"
        ok(peer.command("USER user"))
        ok(peer.command("PASS secret"))
        other = connect(srv, raw_peer)
        other.line()
        ok(other.command("USER user"))
        assert other.command("PASS secret") == b"-ERR unable to lock maildrop\r\n"


def test_trailing_spaces_after_every_ok_status_line(raw_peer: list[Raw]) -> None:
    with serving("trailing-spaces") as srv:
        peer = connect(srv, raw_peer)
        assert re.fullmatch(rb"\+OK \S.*\S   \r\n", peer.line())
        assert peer.command("NOOP").startswith(b"-ERR NOOP not allowed")
        assert peer.command("NOOP").endswith(b"state\r\n")  # -ERR lines are left alone
        assert peer.command("USER user") == b"+OK send PASS   \r\n"
        ok(peer.command("PASS secret"))
        assert peer.command("NOOP") == b"+OK   \r\n"
        assert peer.command("STAT") == b"+OK 2 %d   \r\n" % sum(map(len, SMALL))
        assert peer.command("LIST").endswith(b"octets)   \r\n")
        assert listing(peer) == [b"1 %d" % len(SMALL[0]), b"2 %d" % len(SMALL[1])]
        assert peer.command("RETR 1") == b"+OK %d octets   \r\n" % len(SMALL[0])
        assert unstuff(peer.multi()) == SMALL[0]  # the body is untouched


def test_bare_err_strips_every_err_text(raw_peer: list[Raw]) -> None:
    with serving("bare-err") as srv:
        srv.fail_command("NOOP", "-ERR [SYS/TEMP] scripted", times=1)
        peer = connect(srv, raw_peer)
        peer.line()
        assert peer.command("XYZZY") == b"-ERR\r\n"
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR\r\n"
        ok(peer.command("USER user"))
        assert peer.command("PASS secret").startswith(b"+OK maildrop")
        assert peer.command("RETR 9") == b"-ERR\r\n"
        assert peer.command("NOOP") == b"-ERR\r\n"  # scripted answers too
        other = connect(srv, raw_peer)
        other.line()
        ok(other.command("USER user"))
        assert other.command("PASS secret") == b"-ERR\r\n"


def test_list_extra_words_after_the_size(raw_peer: list[Raw]) -> None:
    with serving("list-extra-words") as srv:
        peer = connect(srv, raw_peer)
        peer.login(srv)
        assert ok(peer.command("LIST")).endswith(b"octets)")
        assert listing(peer) == [
            b"1 %d (message 1)" % len(SMALL[0]),
            b"2 %d (message 2)" % len(SMALL[1]),
        ]
        assert peer.command("LIST 2") == b"+OK 2 %d (message 2)\r\n" % len(SMALL[1])
        assert peer.command("LIST 3").startswith(b"-ERR no such message")
        assert peer.command("STAT") == b"+OK 2 %d\r\n" % sum(map(len, SMALL))
        ok(peer.command("UIDL"))
        assert all(len(line.split()) == 2 for line in listing(peer))


def test_no_resp_codes(raw_peer: list[Raw]) -> None:
    with serving("no-resp-codes") as srv:
        peer = connect(srv, raw_peer)
        peer.line()
        lines = capa(peer)
        assert lines is not None
        assert {"UIDL", "TOP"} <= set(lines)
        assert not {"RESP-CODES", "AUTH-RESP-CODE"} & set(lines)
        ok(peer.command("USER user"))
        assert peer.command("PASS wrong") == b"-ERR invalid login\r\n"
        peer.send("APOP user 0123456789abcdef0123456789abcdef")
        assert peer.line() == b"-ERR invalid login\r\n"


@pytest.mark.parametrize("name", ["unlocked-err", "unlocked-drop"])
def test_unlocked_sessions_overlap_and_see_another_clients_removal(
    name: str, raw_peer: list[Raw]
) -> None:
    with serving(name) as srv:
        srv.on_command("RETR", lambda session, arg: srv.remove_message(0), times=1)
        first = connect(srv, raw_peer)
        first.login(srv)
        second = connect(srv, raw_peer)
        second.login(srv)
        assert (srv.holds_lock, srv.in_transaction) == (False, 2)
        if name == "unlocked-err":
            assert first.command("RETR 1") == f"-ERR {VANISHED_REFUSAL}\r\n".encode()
            ok(first.command("RETR 2"))
            assert unstuff(first.multi()) == SMALL[1]
        else:
            first.send("RETR 1")
            received = first.until_closed()
            status = b"+OK %d octets\r\n" % len(SMALL[0])
            assert received == status + SMALL[0][: len(SMALL[0]) // 2]
        # The other session's snapshot also still counts message 1, now gone.
        assert second.command("LIST 1").startswith(b"-ERR" if name == "unlocked-err" else b"+OK 1 ")
        assert [raw for _, raw in srv.mailbox] == SMALL[1:]
        assert srv.deleted == []


def test_estimated_sizes_round_up_to_whole_kibibytes(raw_peer: list[Raw]) -> None:
    messages = [b"x" * 10 + b"\r\n", b"y" * 1022 + b"\r\n", b"z" * 1023 + b"\r\n"]
    with serving("estimated-sizes", messages) as srv:
        peer = connect(srv, raw_peer)
        peer.login(srv)
        ok(peer.command("LIST"))
        assert listing(peer) == [b"1 1024", b"2 1024", b"3 2048"]
        assert peer.command("STAT") == b"+OK 3 4096\r\n"
        assert peer.command("LIST 3") == b"+OK 3 2048\r\n"
        ok(peer.command("RETR 3"))
        assert unstuff(peer.multi()) == messages[2]  # the content is exact
