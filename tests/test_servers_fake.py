"""Server behaviours other than Dovecot's, reproduced with FakePop3Server's public hooks.

Each test names the behaviour it reproduces: a server that substitutes a
message for clients without UTF8 (RFC 6856), servers that give two messages
one UIDL, login refusals that are not about the password, a message deleted by
another client mid-session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import poplib
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from popvault.sync import RunResult
from popvault.testing import FakePop3Server, Served, Vanished, sample_messages
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "servers-Secret-77"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

UTF8_MESSAGE = (
    "From: Jörg Müller <joerg@example.org>\r\n"
    "To: Zoë <zoe@example.org>\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Message-ID: <utf8-1@example.org>\r\n"
    "\r\n"
    "Schöne Grüße.\r\n"
).encode()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


def configure(ws: Workspace, srv: FakePop3Server, **extra: Any) -> None:
    ws.write_config([fake_account(srv, "acct", **extra)])


def run_at(ws: Workspace, when: datetime = T0, **options: Any) -> RunResult:
    return ws.run_at(when, **options)


def has_raw_utf8_header(raw: bytes) -> bool:
    header = raw.split(b"\r\n\r\n", 1)[0]
    return any(octet >= 0x80 for octet in header)


def substitute_without_utf8(served: Served) -> bytes:
    """What a UTF8-offering server sends a client that did not enable UTF-8.

    A generated notice with a new MIME boundary each time, the real message
    attached: about a thousand octets whatever the message's real size.
    """
    if served.utf8 or not has_raw_utf8_header(served.raw):
        return served.raw
    boundary = secrets.token_hex(12)
    notice = (
        "From: Mail Delivery Subsystem <MAILER-DAEMON@fake.popvault.test>\r\n"
        "Subject: Cannot display Unicode content\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        + "This message contains Unicode content that your client cannot display. "
        * 8
        + f"\r\n--{boundary}\r\n"
        "Content-Type: message/global\r\n\r\n"
    ).encode()
    return notice + served.raw + f"\r\n--{boundary}--\r\n".encode()


def utf8_server(messages: list[bytes], **kwargs: Any) -> FakePop3Server:
    capabilities = ("USER", "UIDL", "TOP", "RESP-CODES", "AUTH-RESP-CODE", "UTF8")
    return FakePop3Server(
        messages,
        username="alice",
        password=PASSWORD,
        capabilities=capabilities,
        serve=substitute_without_utf8,
        **kwargs,
    )


# -- 1. a server that substitutes a message -------------------------------------------


def test_utf8_is_enabled_so_the_real_message_is_archived_and_deleted(ws: Workspace) -> None:
    messages = [*sample_messages(3), UTF8_MESSAGE]
    with utf8_server(messages) as srv:
        configure(ws, srv, retention="delete")
        result = run_at(ws)
        assert result.ok, result.error
        assert srv.mailbox == []
        assert any(line.upper() == "UTF8" for line in srv.commands)
    assert ws.stored() == sorted(maildir_form(wire_form(raw)) for raw in messages)
    assert result.held == []


def test_a_substituted_message_is_archived_but_its_server_copy_is_held(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [*sample_messages(2), UTF8_MESSAGE]
    with utf8_server(messages) as srv:
        srv.fail_command("UTF8", "-ERR UTF8 not available")  # as if we never sent it
        configure(ws, srv, retention="delete")
        first = run_at(ws)
        assert first.ok, first.error
        # The two plain messages went; the real UTF-8 message stays on the server.
        assert [raw for _, raw in srv.mailbox] == [UTF8_MESSAGE]
        (held,) = first.held
        assert str(len(UTF8_MESSAGE)) in held
        archived = [p.read_bytes() for p in ws.archived_files("acct")]
        assert any(b"Cannot display Unicode content" in data for data in archived)

        caplog.clear()
        caplog.set_level(logging.WARNING)
        second = run_at(ws, T0 + timedelta(hours=1))
        assert second.ok, second.error
        assert second.messages == 0, "never fetched again, never stored twice"
        assert [raw for _, raw in srv.mailbox] == [UTF8_MESSAGE], "still not deleted"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

        status = json.loads(ws.cli("status", "--json").out)[0]
        assert status["held_messages"] == 1
        assert status["due_for_deletion"] == 0, "a held copy is never promised for deletion"
        assert "LIST" in status["held"][0]
        text = ws.cli("status").out
        assert "held" in text
        assert str(len(UTF8_MESSAGE)) in text
        verify = ws.cli("verify")
        assert verify.code == 0, verify.output
        assert "held on the server" in verify.out

        listed = ws.cli("held")
        assert listed.code == 0
        assert "1 server copy(ies) held" in listed.out
        released = ws.cli("held", "--release")
        assert released.code == 0
        assert "released 1" in released.out
        third = run_at(ws, T0 + timedelta(hours=2))
        assert third.ok, third.error
        assert srv.mailbox == [], "released: retention applies again"


def test_a_body_longer_than_list_by_more_than_a_final_crlf_is_held(ws: Workspace) -> None:
    def padded(served: Served) -> bytes:
        return served.raw + b"X" * 3 + b"\r\n" if served.number == 2 else served.raw

    with FakePop3Server(
        sample_messages(3), username="alice", password=PASSWORD, serve=padded
    ) as srv:
        configure(ws, srv, retention="delete")
        result = run_at(ws)
        assert result.ok, result.error
        assert len(result.held) == 1
        assert result.held[0].startswith("message 2:")
        assert len(srv.mailbox) == 1


def test_a_final_crlf_the_server_adds_is_not_a_mismatch(ws: Workspace) -> None:
    # Dovecot under-reports a message without a final newline by exactly 2.
    unended = b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line"
    with FakePop3Server([unended], username="alice", password=PASSWORD) as srv:
        configure(ws, srv, retention="delete")
        result = run_at(ws)
        assert result.ok, result.error
        assert result.held == []
        assert srv.mailbox == []


def test_estimated_sizes_are_declared_with_trust_list_sizes_false(ws: Workspace) -> None:
    def kib(raw: bytes) -> int:
        return -(-len(raw) // 1024) * 1024

    with FakePop3Server(
        sample_messages(4), username="alice", password=PASSWORD, list_size=kib
    ) as srv:
        configure(ws, srv, retention="delete", trust_list_sizes=False)
        result = run_at(ws)
        assert result.ok, result.error
        assert result.messages == 4
        assert result.held == []
        assert srv.mailbox == []


def test_estimated_sizes_without_the_key_are_refused_as_short(ws: Workspace) -> None:
    def kib(raw: bytes) -> int:
        return -(-len(raw) // 1024) * 1024 + 1024

    with FakePop3Server(
        sample_messages(2), username="alice", password=PASSWORD, list_size=kib
    ) as srv:
        configure(ws, srv, retention="delete")
        result = run_at(ws)
        assert result.messages == 0
        assert "truncated" in (result.error or "")
        assert len(srv.mailbox) == 2, "nothing archived, nothing deleted"


# -- 2. two messages with one UIDL ----------------------------------------------------


def md5_uidl(raw: bytes) -> str:
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def test_byte_identical_messages_under_one_uidl_are_archived_once_each_and_deleted(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    twin, other = sample_messages(2, seed=11)
    messages = [twin, other, twin]
    with FakePop3Server(messages, username="alice", password=PASSWORD, uidl_for=md5_uidl) as srv:
        assert srv.mailbox[0][0] == srv.mailbox[2][0]
        configure(ws, srv, retention="14d")
        caplog.set_level(logging.WARNING)
        first = run_at(ws)
        assert first.ok, first.error
        assert first.messages == 3
        assert len(ws.archived_files("acct")) == 3, "two listed messages, two files"
        warnings = [r for r in caplog.records if "more than one message" in r.getMessage()]
        assert len(warnings) == 2, "one warning per message archived under the shared UIDL"

        caplog.clear()
        second = run_at(ws, T0 + timedelta(days=1))
        assert second.ok
        assert second.messages == 0
        assert len(ws.archived_files("acct")) == 3
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

        status = json.loads(ws.cli("status", "--json").out)[0]
        assert status["archived_messages"] == 3

        late = run_at(ws, T0 + timedelta(days=15))
        assert late.ok, late.error
        assert late.deleted == 3
        assert srv.mailbox == []
        # The two copies under the shared UIDL were checked by content before DELE.
        retrs = [c for c in srv.commands if c.startswith("RETR")]
        assert len(retrs) == 3 + 2
    assert ws.stored() == sorted(maildir_form(wire_form(raw)) for raw in messages)


def test_different_messages_under_one_uidl_are_both_archived_and_not_confused(
    ws: Workspace,
) -> None:
    first_raw, second_raw, plain = sample_messages(3, seed=4)
    uidls = ["same", "same", "plain"]
    with FakePop3Server(
        [first_raw, second_raw, plain], uidls=uidls, username="alice", password=PASSWORD
    ) as srv:
        configure(ws, srv, retention="delete")
        result = run_at(ws)
        assert result.ok, result.error
        assert result.messages == 3
        assert srv.mailbox == []
    assert ws.stored() == sorted(maildir_form(wire_form(r)) for r in (first_raw, second_raw, plain))
    rows = ws.ledger_rows("SELECT occurrence FROM messages WHERE uidl = 'same' ORDER BY 1")
    assert rows == [(1,), (2,)]


def test_when_one_of_two_shared_uidl_messages_goes_the_other_is_still_known(
    ws: Workspace,
) -> None:
    a, b = sample_messages(2, seed=9)
    with FakePop3Server([a, b], uidls=["dup", "dup"], username="alice", password=PASSWORD) as srv:
        configure(ws, srv, retention="keep")
        assert run_at(ws).messages == 2
        srv.remove_message(0)  # another client takes the first one
        again = run_at(ws, T0 + timedelta(hours=1))
        assert again.ok, again.error
        assert again.messages == 0, "b is archived already: not stored a second time"
        srv.add_message(a, "dup")  # and a third one with the same UIDL arrives
        third = run_at(ws, T0 + timedelta(hours=2))
        assert third.ok, third.error
    assert len(ws.archived_files("acct")) == 2 + third.messages
    assert third.messages in (0, 1)
    # a came back with the same content: it is the archived one, or a new copy; the
    # archive never lacks anything the server lists.
    assert set(ws.stored()) >= {maildir_form(wire_form(a)), maildir_form(wire_form(b))}


def test_a_uidl_the_server_reuses_after_popvault_deleted_its_message_is_a_new_message(
    ws: Workspace,
) -> None:
    first, second = sample_messages(2, seed=21)
    with FakePop3Server([first], uidls=["reused"], username="alice", password=PASSWORD) as srv:
        configure(ws, srv, retention="delete")
        assert run_at(ws).deleted == 1
        srv.add_message(second, "reused")
        result = run_at(ws, T0 + timedelta(hours=1))
        assert result.ok, result.error
        assert result.messages == 1
        assert srv.mailbox == []
    assert ws.stored() == sorted(maildir_form(wire_form(r)) for r in (first, second))


# -- 3. a login refused for another reason than the password -----------------------------


def test_a_refusal_without_auth_code_from_a_server_with_codes_is_not_the_password(
    ws: Workspace,
) -> None:
    with FakePop3Server(sample_messages(2), username="alice", password=PASSWORD) as srv:
        srv.fail_command("PASS", "-ERR message is damaged")
        configure(ws, srv)
        result = ws.cli("run")
    assert result.code == 1
    assert "'-ERR message is damaged'" in result.out
    assert "refused the credentials" not in result.out
    assert "unknown on server" in result.out
    assert "0 on server" not in result.out


def test_a_plain_refusal_from_a_server_without_codes_is_quoted_and_careful(
    ws: Workspace,
) -> None:
    with FakePop3Server(
        sample_messages(2),
        username="alice",
        password=PASSWORD,
        capabilities=("USER", "UIDL"),
        login_refusal="invalid login",
    ) as srv:
        configure(ws, srv)
        ws.write_secret("wrong-password")
        result = ws.cli("run")
    assert result.code == 1
    assert "'-ERR invalid login'" in result.out
    assert "cannot tell a wrong password from a problem on the server" in result.out


# -- also: another client deletes a message while popvault archives -----------------------


def delete_first_from_another_session(srv: FakePop3Server) -> None:
    """Another POP3 client logs in, deletes message 1 and QUITs (an unlocked maildrop)."""
    other = poplib.POP3(srv.host, srv.port, timeout=5)
    other.user(srv.username)
    other.pass_(srv.password)
    other.dele(1)
    other.quit()


@pytest.mark.parametrize("vanished", ["err", "drop"])
def test_a_message_another_session_deletes_mid_run_loses_nothing(
    ws: Workspace, vanished: Vanished
) -> None:
    # Some servers answer -ERR for the vanished message, two drop the connection.
    messages = sample_messages(5, seed=3)
    with FakePop3Server(
        messages,
        username="alice",
        password=PASSWORD,
        exclusive_lock=False,
        vanished=vanished,
    ) as srv:
        uidls = [uidl for uidl, _ in srv.mailbox]
        srv.on_command(
            "RETR", lambda _session, _arg: delete_first_from_another_session(srv), times=1
        )
        configure(ws, srv, retention="delete")
        first = run_at(ws)  # RETR 1 finds its message gone (or the line cut)
        assert first.messages <= len(messages) - 1
        second = run_at(ws, T0 + timedelta(hours=1))
        assert second.ok, second.error
        assert srv.mailbox == []
        assert srv.deleted[0] == uidls[0], "the other session's deletion"
        assert sorted(srv.deleted[1:]) == sorted(uidls[1:])
        third = run_at(ws, T0 + timedelta(hours=2))
        assert third.ok, third.error
        assert (third.messages, third.on_server) == (0, 0)
    assert ws.stored() == sorted(maildir_form(wire_form(raw)) for raw in messages[1:])


def test_held_lists_json_and_releases_only_the_named_uidl(ws: Workspace) -> None:
    def padded(served: Served) -> bytes:
        return served.raw + b"X-Padding: " + b"p" * 40 + b"\r\n"  # every message too long

    with FakePop3Server(
        sample_messages(3), username="alice", password=PASSWORD, serve=padded
    ) as srv:
        configure(ws, srv, retention="delete")
        first = run_at(ws)
        assert first.ok, first.error
        assert len(first.held) == 3
        uidls = [uidl for uidl, _ in srv.mailbox]
        assert len(uidls) == 3, "held: nothing deleted"

        listed = ws.cli("held", "--json")
        assert listed.code == 0, listed.output
        (entry,) = json.loads(listed.out)
        assert [m["uidl"] for m in entry["held"]] == uidls
        assert all(m["received_size"] > m["server_size"] for m in entry["held"])

        assert ws.cli("held", "--uidl", uidls[0]).code == 2, "--uidl goes with --release"
        released = ws.cli("held", "--release", "--uidl", uidls[1])
        assert released.code == 0, released.output
        assert "released 1" in released.out
        second = run_at(ws, T0 + timedelta(minutes=5))
        assert second.ok, second.error
        assert second.deleted == 1
        assert [uidl for uidl, _ in srv.mailbox] == [uidls[0], uidls[2]]
        assert json.loads(ws.cli("status", "--json").out)[0]["held_messages"] == 2


def test_a_size_that_changed_since_archiving_is_checked_by_content_before_dele(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    # LIST sizes that drift between sessions while the messages stay the same.
    estimate = {"extra": 0}

    def drifting(raw: bytes) -> int:
        return len(raw) + estimate["extra"]

    with FakePop3Server(
        sample_messages(2), username="alice", password=PASSWORD, list_size=drifting
    ) as srv:
        configure(ws, srv, retention="1d", trust_list_sizes=False)
        assert run_at(ws).messages == 2
        estimate["extra"] = 100
        caplog.set_level(logging.WARNING)
        later = run_at(ws, T0 + timedelta(days=2))
        assert later.ok, later.error
        assert later.messages == 0, "the same messages: nothing archived twice"
        assert later.deleted == 2
        assert srv.mailbox == []
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        retrs = [c for c in srv.commands if c.startswith("RETR")]
        assert len(retrs) == 2 + 2, "each copy fetched once more, to compare its content"


def test_a_message_that_changed_under_its_uidl_is_archived_again_and_not_lost(
    ws: Workspace,
) -> None:
    original, replacement = sample_messages(2, seed=31)
    changed = {"on": False}

    def serve(served: Served) -> bytes:
        return replacement if changed["on"] else served.raw

    with FakePop3Server(
        [original],
        uidls=["kept"],
        username="alice",
        password=PASSWORD,
        serve=serve,
        list_size=lambda raw: len(replacement if changed["on"] else raw),
    ) as srv:
        configure(ws, srv, retention="1d")
        assert run_at(ws).messages == 1
        changed["on"] = True  # the server now has another message under the same UIDL
        later = run_at(ws, T0 + timedelta(days=2))
        assert later.ok, later.error
        assert later.messages == 1, "the new content is archived"
        assert later.deleted == 0, "not deleted in the session that found it"
        last = run_at(ws, T0 + timedelta(days=4))
        assert last.ok, last.error
        assert last.deleted == 1
        assert srv.mailbox == []
    assert ws.stored() == sorted(maildir_form(wire_form(r)) for r in (original, replacement))
