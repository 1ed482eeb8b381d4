"""`popvault` against POP3 servers of other implementations than Dovecot.

Each peer (``tests/peers.py``) is a private server, started once per session:
GNU Mailutils pop3d and popa3d, both serving mbox files. The archive promises
are checked against what each server really serves, fetched independently
with the standard library's poplib:

* GNU pop3d adds header fields of its own (``X-UIDL`` on the fly in a
  mailbox's first session; ``X-UID``, ``Status`` and ``X-IMAPbase`` written into
  the mbox at the first ``QUIT`` after a message was read) and gives every
  message its own UIDL (``MD5.UIDVALIDITY.UID``).
* popa3d serves the stored bytes unchanged, but its UIDL is an MD5 of the
  ``Received:``, ``Date:`` and ``Message-ID:`` fields only: byte-identical
  messages share a UIDL, and so do different messages without those fields.

Both send CRLF for the mbox's LF line ends and keep a bare CR.
"""

from __future__ import annotations

import json
import logging
import poplib
from pathlib import Path
from typing import Any

import pytest

from corpus import corpus
from peers import MboxMailbox, PeerServer, Popa3dServer, without_headers
from popvault.testing import sample_messages
from workspace import Workspace, maildir_form

pytestmark = pytest.mark.peers

# Body lines an mbox must quote; GNU pop3d unquotes them (mboxrd), popa3d serves them quoted.
FROM_LINES = b"From: a@example.org\r\nSubject: from lines\r\n\r\nFrom here\r\n>From there\r\n"
# No Received/Date/Message-ID: on popa3d it shares its UIDL with five corpus messages.
LATE = b"From: late@example.org\r\nSubject: later\r\n\r\narrived later\r\n"


@pytest.fixture(autouse=True)
def _long_poplib_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # poplib refuses lines over 2048 octets; the corpus has a 5000-octet line.
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def account(peer: PeerServer, mailbox: MboxMailbox, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "peer",
        "host": peer.host,
        "port": peer.port,
        "security": "plain",
        "allow_plaintext": True,
        "username": mailbox.username,
        "password_file": "secret",
        "timeout": "20s",
    }
    entry.update(extra)
    return entry


def configure(ws: Workspace, peer: PeerServer, mailbox: MboxMailbox, **extra: Any) -> None:
    ws.write_secret(mailbox.password)
    ws.write_config([account(peer, mailbox, **extra)])


def served(peer: PeerServer, mailbox: MboxMailbox) -> list[tuple[str, bytes]]:
    """(UIDL, message) of every message as the server's RETR sends it (CRLF), then QUIT."""
    client = poplib.POP3(peer.host, peer.port, timeout=20)
    try:
        client.user(mailbox.username)
        client.pass_(mailbox.password)
        listing = []
        for line in client.uidl()[1]:
            number, uidl = line.split()
            lines = client.retr(int(number))[1]
            listing.append((uidl.decode(), b"".join(line + b"\r\n" for line in lines)))
        client.quit()
    finally:
        client.close()
    return listing


def settled(peer: PeerServer, mailbox: MboxMailbox) -> list[tuple[str, bytes]]:
    """What the server serves once serving no longer changes its mailbox.

    GNU pop3d rewrites the mbox at the first QUIT after a message was read
    (adding X-UID and Status), so its second listing differs from the first
    and its third equals the second; popa3d never changes what it serves.
    """
    before = served(peer, mailbox)
    for _ in range(2):
        after = served(peer, mailbox)
        if after == before:
            return after
        before = after
    raise AssertionError(f"{peer.name} changes the messages it serves at every session")


def archive(ws: Workspace) -> list[bytes]:
    return sorted(path.read_bytes() for path in ws.archived_files("peer"))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_keep_archives_every_message_once_as_served_then_only_the_new_one(
    peer: PeerServer,
    peer_mailbox: MboxMailbox,
    ws: Workspace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = [*corpus(), FROM_LINES]
    for raw in messages:
        peer_mailbox.deliver(raw)
    listing = settled(peer, peer_mailbox)
    uidls = [uidl for uidl, _ in listing]
    assert len(listing) == len(messages)
    # popa3d: the twins share one UIDL, and so do the six messages without
    # Received/Date/Message-ID; GNU pop3d numbers every message.
    assert (len(set(uidls)) < len(uidls)) == peer.shares_uidls, uidls
    configure(ws, peer, peer_mailbox)
    caplog.set_level(logging.WARNING)
    first = ws.cli("run")
    assert first.code == 0, first.output
    assert f"{len(messages)} new message" in first.out, first.output
    # Byte-exact as served (the Maildir store keeps LF line ends).
    assert archive(ws) == sorted(maildir_form(raw) for _, raw in listing)
    assert ws.ledger_rows("SELECT count(*) FROM messages") == [(len(messages),)]
    # popvault warns once for each message archived under a UIDL listed more than once.
    shared = [uidl for uidl in uidls if uidls.count(uidl) > 1]
    assert len([w for w in warnings(caplog) if "more than one message" in w]) == len(shared)

    files = ws.archived_files("peer")
    snapshot = {path: path.stat().st_mtime_ns for path in files}
    caplog.clear()
    caplog.set_level(logging.WARNING)
    second = ws.cli("run")
    assert second.code == 0, second.output
    assert "0 new message" in second.out, second.output
    assert warnings(caplog) == [], second.output
    assert {path: path.stat().st_mtime_ns for path in ws.archived_files("peer")} == snapshot

    peer_mailbox.deliver(LATE)
    listing = settled(peer, peer_mailbox)
    caplog.clear()
    third = ws.cli("run")
    assert third.code == 0, third.output
    assert "1 new message" in third.out, third.output
    (new,) = set(ws.archived_files("peer")) - set(files)
    # The mbox's last message; GNU pop3d has meanwhile rewritten the X-IMAPbase
    # field of the first message, which keep does not fetch again.
    assert new.read_bytes() == maildir_form(listing[-1][1])
    late_shares = [uidl for uidl, _ in listing].count(listing[-1][0]) > 1
    assert len([w for w in warnings(caplog) if "more than one message" in w]) == late_shares
    assert len(peer_mailbox.messages()) == len(messages) + 1, "keep never deletes"

    verify = ws.cli("verify", "--json")
    assert verify.code == 0, verify.output
    (report,) = json.loads(verify.out)
    assert report["problems"] == []
    assert report["held"] == []


def test_delete_empties_the_server_and_archives_each_message_once(
    peer: PeerServer, peer_mailbox: MboxMailbox, ws: Workspace
) -> None:
    # A fresh mailbox, never read before: GNU pop3d makes up X-UIDL headers on
    # the fly in this first session.
    messages = [*corpus(), FROM_LINES]
    for raw in messages:
        peer_mailbox.deliver(raw)
    configure(ws, peer, peer_mailbox, retention="delete")

    first = ws.cli("run")
    assert first.code == 0, first.output
    status = json.loads(ws.cli("status", "--json").out)[0]
    # Only server copies popvault says it holds may stay; these servers list
    # exact sizes and popvault asks UIDL before LIST, so it holds none.
    assert len(peer_mailbox.messages()) == status["held_messages"] == 0, first.output
    assert status["archived_messages"] == len(messages)
    # Byte-exact as served, apart from the fields the server adds itself.
    expected = sorted(maildir_form(peer_mailbox.serves(raw)) for raw in messages)
    assert sorted(without_headers(raw, peer.added_headers) for raw in archive(ws)) == expected

    second = ws.cli("run")
    assert second.code == 0, second.output
    assert "0 new message" in second.out, second.output
    assert len(archive(ws)) == len(messages), "nothing archived twice"
    assert ws.ledger_rows("SELECT count(*) FROM messages") == [(len(messages),)]
    assert ws.cli("verify").code == 0


def test_popa3d_shared_uidls_are_archived_and_deleted_one_by_one(
    popa3d: Popa3dServer, ws: Workspace
) -> None:
    mailbox = popa3d.add_user()
    twin = b"From: twin@example.org\r\nSubject: twice\r\nMessage-ID: <t@x>\r\n\r\nsame\r\n"
    plain = [b"From: a@example.org\r\nSubject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    for raw in [twin, *plain, twin]:
        mailbox.deliver(raw)
    uidls = [uidl for uidl, _ in served(popa3d, mailbox)]
    assert len(set(uidls)) == 2, uidls  # twin, twin; and the three without ID fields
    configure(ws, popa3d, mailbox)

    kept = ws.cli("run")
    assert kept.code == 0, kept.output
    assert archive(ws) == sorted(maildir_form(raw) for raw in [twin, twin, *plain])
    occurrences = ws.ledger_rows("SELECT uidl, occurrence FROM messages ORDER BY uidl, occurrence")
    assert sorted(occurrences) == sorted(
        [(uidls[0], 1), (uidls[0], 2), (uidls[1], 1), (uidls[1], 2), (uidls[1], 3)]
    )

    configure(ws, popa3d, mailbox, retention="delete")
    deleted = ws.cli("run")
    assert deleted.code == 0, deleted.output
    assert "0 new message" in deleted.out, deleted.output
    assert mailbox.messages() == [], deleted.output
    assert len(archive(ws)) == 5, "nothing archived twice"
    status = json.loads(ws.cli("status", "--json").out)[0]
    assert status["held_messages"] == 0
    assert ws.cli("verify").code == 0


def test_gnu_pop3d_rewriting_status_fields_is_not_a_new_message(
    gnu_pop3d: PeerServer, ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    mailbox = gnu_pop3d.add_user()
    messages = corpus()
    for raw in messages:
        mailbox.deliver(raw)  # never read by any client: as a mail server delivers it
    configure(ws, gnu_pop3d, mailbox)
    first = ws.cli("run")
    assert first.code == 0, first.output
    assert len(archive(ws)) == len(messages)

    caplog.set_level(logging.WARNING)
    second = ws.cli("run")
    assert second.code == 0, second.output
    assert warnings(caplog) == [], second.output
    assert "0 new message" in second.out, second.output
    assert len(archive(ws)) == len(messages), "nothing archived twice"

    # GNU pop3d rewrote X-UID and Status: sizes changed, the messages did not. Before
    # each DELE popvault checks the content blind to those fields, and deletes.
    configure(ws, gnu_pop3d, mailbox, retention="delete")
    third = ws.cli("run")
    assert third.code == 0, third.output
    assert f"{len(messages)} deleted from server" in third.out, third.output
    assert warnings(caplog) == [], third.output
    assert len(archive(ws)) == len(messages), "nothing archived twice"
    status = json.loads(ws.cli("status", "--json").out)[0]
    assert status["held_messages"] == 0


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_gnu_pop3d_over_tls(gnu_pop3d: PeerServer, ws: Workspace, security: str) -> None:
    mailbox = gnu_pop3d.add_user()
    mailbox.deliver(b"From: a@example.org\r\nSubject: tls\r\n\r\nhello\r\n")
    port = gnu_pop3d.tls_port if security == "tls" else gnu_pop3d.port
    entry = account(gnu_pop3d, mailbox, security=security, port=port, ca_file=gnu_pop3d.ca_file)
    del entry["allow_plaintext"]
    ws.write_secret(mailbox.password)
    ws.write_config([entry])
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert len(ws.archived_files("peer")) == 1


def test_a_maildir_is_adopted_by_headers_on_each_peer(
    ws: Workspace, peer: PeerServer, peer_mailbox: MboxMailbox, tmp_path: Path
) -> None:
    # Messages with a Message-ID and a Date only: the peers add their own fields
    # (GNU pop3d's X-UIDL, X-UID, Status), which the match leaves aside.
    from popvault.importing.maildir import header_facts  # noqa: PLC0415 - this test only

    keyed = (raw for raw in sample_messages(60, seed=4) if header_facts(raw).key)
    mail = [raw for raw in keyed if b"\nFrom " not in raw.replace(b"\r\n", b"\n")][:6]
    assert len(mail) == 6
    for raw in mail:
        peer_mailbox.deliver(raw)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    # Another tool fetched the first four: LF line ends and a field of its own on top.
    for number, (_, raw) in enumerate(served(peer, peer_mailbox)[:4]):
        stored = b"Delivered-To: someone@example.org\n" + maildir_form(raw)
        (maildir / "cur" / f"1767225600.M{number}P1.host:2,S").write_bytes(stored)
    configure(ws, peer, peer_mailbox)

    adopted = ws.cli("import", "maildir", str(maildir), "--account", "peer")

    assert adopted.code == 0, adopted.output
    assert "4 match a file, 0 are ambiguous, 2 match none" in adopted.out
    run = ws.cli("run")
    assert run.code == 0, run.output
    assert len(ws.archived_files("peer")) == 2
