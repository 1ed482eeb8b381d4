"""`popvault run` against a real Dovecot: the acceptance checks of the core issue."""

from __future__ import annotations

import json
import logging
import poplib
from pathlib import Path
from typing import Any

import pytest

from popvault.testing import large_attachment_message, sample_messages
from workspace import Workspace, dovecot_account, maildir_form, wire_form

pytestmark = pytest.mark.dovecot


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def account(dovecot, mailbox, name: str, **extra: Any) -> dict[str, Any]:
    return dovecot_account(dovecot, mailbox.username, name, **extra)


def expected_archive(raws: list[bytes], fmt: str) -> list[bytes]:
    form = (lambda raw: maildir_form(wire_form(raw))) if fmt == "maildir" else wire_form
    return sorted(form(raw) for raw in raws)


def varied_mailbox(count: int) -> list[bytes]:
    raws = sample_messages(count, seed=7)
    raws.append(large_attachment_message(3 * 1024 * 1024))
    return raws


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_archive_is_byte_exact_once_and_incremental(
    dovecot, dovecot_mailbox, ws: Workspace, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = varied_mailbox(250)
    for raw in raws:
        dovecot_mailbox.deliver(raw)
    monkeypatch.setenv("PW_MAIN", dovecot_mailbox.password)
    ws.write_config([account(dovecot, dovecot_mailbox, "main", format=fmt)])

    first = ws.cli("run")
    assert first.code == 0, first.output
    files = ws.archived_files("main")
    assert sorted(path.read_bytes() for path in files) == expected_archive(raws, fmt)
    rows = ws.ledger_rows("SELECT count(*), count(DISTINCT uidl) FROM messages")
    assert rows == [(len(raws), len(raws))]

    # A second run downloads nothing and changes no file.
    snapshot = {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in files}
    second = ws.cli("run")
    assert second.code == 0, second.output
    assert "0 new message" in second.out
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in ws.archived_files("main")}
    assert after == snapshot

    # Messages added on the server are the only ones fetched next time.
    late = [b"From: late@example.org\nSubject: late %d\n\nbody %d\n" % (i, i) for i in range(3)]
    for raw in late:
        dovecot_mailbox.deliver(raw)
    third = ws.cli("run")
    assert third.code == 0, third.output
    assert "3 new message" in third.out
    assert sorted(p.read_bytes() for p in ws.archived_files("main")) == expected_archive(
        raws + late, fmt
    )
    # Retention "keep": every message is still on the server.
    assert len(dovecot_mailbox.messages()) == len(raws) + len(late)


def test_implicit_tls_verifies_the_certificate(
    dovecot, dovecot_mailbox, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot_mailbox.deliver(b"From: a@example.org\nSubject: tls\n\nhello\n")
    monkeypatch.setenv("PW_TLS", dovecot_mailbox.password)
    entry = account(dovecot, dovecot_mailbox, "tls", security="tls", port=dovecot.tls_port)
    without_ca = {k: v for k, v in entry.items() if k != "ca_file"}

    ws.write_config([without_ca])
    refused = ws.cli("run")
    assert refused.code == 1
    assert "certificate" in refused.out.lower()
    assert ws.archived_files("tls") == []

    ws.write_config([entry])
    accepted = ws.cli("run")
    assert accepted.code == 0, accepted.output
    assert len(ws.archived_files("tls")) == 1


def test_wrong_password_fails_that_account_and_archives_the_other(
    dovecot, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = dovecot.add_user()
    bad = dovecot.add_user()
    good.deliver(b"From: a@example.org\nSubject: one\n\nfirst\n")
    bad.deliver(b"From: a@example.org\nSubject: two\n\nsecond\n")
    monkeypatch.setenv("PW_GOOD", good.password)
    monkeypatch.setenv("PW_BAD", "Wrong-Secret-123")
    ws.write_config([account(dovecot, bad, "bad"), account(dovecot, good, "good")])

    result = ws.cli("run")
    assert result.code == 1
    assert "bad" in result.out
    assert "FAILED" in result.out
    assert len(ws.archived_files("good")) == 1
    assert ws.archived_files("bad") == []
    status = json.loads(ws.cli("status", "--json").out)
    by_name = {row["name"]: row for row in status}
    assert by_name["bad"]["last_outcome"] == "failed"
    assert by_name["bad"]["last_error"]
    assert by_name["good"]["last_outcome"] == "ok"
    everything = result.output + ws.cli("status").output + ws.ledger_dump()
    assert "Wrong-Secret-123" not in everything
    assert good.password not in everything


def test_bad_key_exits_2_naming_file_account_and_key(
    dovecot, dovecot_mailbox, ws: Workspace
) -> None:
    ws.write_config([account(dovecot, dovecot_mailbox, "main", timeout="sixty")])
    result = ws.cli("run")
    assert result.code == 2
    assert str(ws.config) in result.err
    assert "'main'" in result.err
    assert "timeout" in result.err


def test_apop_login_when_asked_for(
    dovecot,
    dovecot_mailbox,
    ws: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dovecot_mailbox.deliver(b"From: a@example.org\nSubject: apop\n\nhello\n")
    monkeypatch.setenv("PW_APOP", dovecot_mailbox.password)
    ws.write_config([account(dovecot, dovecot_mailbox, "apop", auth="apop")])
    result = ws.cli("run", "--log-level", "debug")
    assert result.code == 0, result.output
    assert len(ws.archived_files("apop")) == 1
    assert dovecot_mailbox.password not in result.output
    assert "APOP" in caplog.text, "the debug log shows the (redacted) commands"
    assert dovecot_mailbox.password not in caplog.text


def served(dovecot, mailbox) -> list[tuple[str, bytes]]:
    """(UIDL, message) as Dovecot serves them now, via poplib (an independent client)."""
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        client.user(mailbox.username)
        client.pass_(mailbox.password)
        uidls = [line.split()[1].decode() for line in client.uidl()[1]]
        bodies = [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, len(uidls) + 1)]
    finally:
        client.quit()
    return list(zip(uidls, bodies, strict=True))


def test_dovecot_header_md5_uidls_repeat_and_each_message_is_still_archived_once(
    dovecot, ws: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Dovecot with mbox and pop3_uidl_format = %m gives two messages one UIDL."""
    mailbox = dovecot.add_mbox_user()
    twin = b"From: twin@example.org\r\nSubject: twice\r\nMessage-ID: <twin@x>\r\n\r\nsame\r\n"
    raws = [twin, *sample_messages(2, seed=8), twin]
    for raw in raws:
        mailbox.deliver(raw)
    before = served(dovecot, mailbox)
    uidls = [uidl for uidl, _ in before]
    assert uidls[0] == uidls[3], "Dovecot lists both twins under one UIDL"
    monkeypatch.setenv("PW_MBOX", mailbox.password)
    entry = account(dovecot, mailbox, "mbox", retention="keep")
    ws.write_config([entry])
    caplog.set_level(logging.WARNING)
    first = ws.cli("run")
    assert first.code == 0, first.output
    assert sorted(p.read_bytes() for p in ws.archived_files("mbox")) == sorted(
        maildir_form(body) for _, body in before
    )
    caplog.clear()
    second = ws.cli("run")
    assert second.code == 0, second.output
    assert "0 new message" in second.out
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

    ws.write_config([{**entry, "retention": "delete"}])
    third = ws.cli("run")
    assert third.code == 0, third.output
    assert f"{len(raws)} deleted from server" in third.out
    assert served(dovecot, mailbox) == []
    assert len(ws.archived_files("mbox")) == len(raws), "nothing archived twice"
    assert ws.cli("verify").code == 0
