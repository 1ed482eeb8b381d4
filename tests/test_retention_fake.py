"""Retention policies, poison messages and locking, against the fake server.

The clock is passed in, so "leave on the server for 14 days" is tested without
waiting; the Dovecot tests check the same with real seconds.
"""

from __future__ import annotations

import json
import poplib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from popvault import config as config_module
from popvault.errors import ReadError
from popvault.ledger import Ledger
from popvault.pop3.client import Pop3Client
from popvault.sync import MAX_ATTEMPTS, sync_account
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "retention-Secret-42"
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(6), username="bob", password=PASSWORD) as srv:
        yield srv


def configure(ws: Workspace, srv: FakePop3Server, **extra: Any) -> None:
    ws.write_config([fake_account(srv, "acct", **extra)])


def ledger_times(ws: Workspace) -> dict[str, tuple[Any, Any, Any]]:
    rows = ws.ledger_rows("SELECT uidl, deleted_at, gone_at, delete_requested_at FROM messages")
    return {uidl: (deleted, gone, requested) for uidl, deleted, gone, requested in rows}


def test_delete_empties_the_server_after_archiving_everything_once(ws, server) -> None:
    originals = [raw for _, raw in server.mailbox]
    uidls = [uidl for uidl, _ in server.mailbox]
    configure(ws, server, retention="delete")
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert server.mailbox == []
    assert sorted(server.deleted) == sorted(uidls)
    stored = sorted(path.read_bytes() for path in ws.archived_files("acct"))
    assert stored == sorted(maildir_form(wire_form(raw)) for raw in originals)
    times = ledger_times(ws)
    assert all(
        deleted is not None and requested is None for deleted, _, requested in times.values()
    )
    # Every DELE came after that message's RETR, and the session ended with QUIT.
    commands = server.commands
    for number in range(1, len(uidls) + 1):
        assert commands.index(f"RETR {number}") < commands.index(f"DELE {number}")
    assert commands[-1] == "QUIT"


def test_duration_deletes_only_what_was_archived_long_enough_ago(ws, server) -> None:
    configure(ws, server, retention="14d")
    first = ws.run_at(T0)
    assert first.ok, first.error
    assert first.deleted == 0
    early = server.add_message(b"From: a@x\r\nSubject: later\r\n\r\nlater\r\n")
    assert ws.run_at(T0 + timedelta(days=7)).messages == 1

    # Just before the first messages' 14 days: nothing goes.
    almost = ws.run_at(T0 + timedelta(days=14) - timedelta(seconds=1))
    assert almost.deleted == 0
    assert len(server.mailbox) == 7

    due = ws.run_at(T0 + timedelta(days=14))
    assert due.ok, due.error
    assert due.deleted == 6
    assert [uidl for uidl, _ in server.mailbox] == [early]

    last = ws.run_at(T0 + timedelta(days=21))
    assert last.deleted == 1
    assert server.mailbox == []
    assert len(ws.archived_files("acct")) == 7


def test_switching_from_keep_to_a_duration_counts_from_archiving(ws, server) -> None:
    configure(ws, server, retention="keep")
    assert ws.run_at(T0).ok
    assert ws.run_at(T0 + timedelta(days=30)).deleted == 0
    configure(ws, server, retention="30d")
    result = ws.run_at(T0 + timedelta(days=30))
    assert result.deleted == 6
    assert server.mailbox == []


def test_dry_run_lists_deletions_and_changes_nothing(ws, server) -> None:
    configure(ws, server, retention="1d")
    assert ws.run_at(T0).ok
    before = ws.ledger_dump()
    files = ws.archived_files("acct")
    server.add_message(b"From: a@x\r\nSubject: new\r\n\r\nnew\r\n")
    seen = len(server.commands)

    plan = ws.run_at(T0 + timedelta(days=2), dry_run=True)
    assert plan.ok, plan.error
    assert len(plan.planned) == 1
    assert len(plan.due_for_deletion) == 6
    assert ws.ledger_dump() == before
    assert ws.archived_files("acct") == files
    assert len(server.mailbox) == 7
    assert not any(c.startswith(("DELE", "RETR")) for c in server.commands[seen:])

    result = ws.cli("run", "--dry-run")
    assert result.code == 0, result.output
    assert "would download 1 of 7" in result.out
    assert "would delete 6" in result.out


def test_a_missing_archive_file_keeps_the_server_copy(ws, server) -> None:
    configure(ws, server, retention="1h")
    assert ws.run_at(T0).ok
    victim = ws.archived_files("acct")[0]
    victim.unlink()
    result = ws.run_at(T0 + timedelta(hours=2))
    assert not result.ok
    assert "kept on the server" in (result.error or "")
    assert result.deleted == 5
    assert len(server.mailbox) == 1


def test_a_session_cut_before_quit_deletes_nothing_and_the_next_run_finishes(
    ws, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(ws, server, retention="delete")

    def drop_instead_of_quit(self: Pop3Client) -> None:
        self.close()
        raise ReadError("connection lost before QUIT", account=self.account)

    monkeypatch.setattr(Pop3Client, "quit", drop_instead_of_quit)
    first = ws.run_at(T0)
    assert not first.ok
    assert len(server.mailbox) == 6, "no QUIT, so the server deleted nothing"
    assert all(req is not None for _, _, req in ledger_times(ws).values())

    monkeypatch.undo()
    second = ws.run_at(T0 + timedelta(minutes=5))
    assert second.ok, second.error
    assert second.messages == 0
    assert second.deleted == 6
    assert server.mailbox == []
    times = ledger_times(ws)
    assert all(d is not None and g is None and r is None for d, g, r in times.values())


def test_a_lost_quit_reply_is_recorded_as_our_deletion(
    ws, server, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(ws, server, retention="delete")
    real_quit = Pop3Client.quit

    def quit_then_lose_the_reply(self: Pop3Client) -> None:
        real_quit(self)  # the server entered UPDATE and deleted
        raise ReadError("connection lost reading the QUIT reply", account=self.account)

    monkeypatch.setattr(Pop3Client, "quit", quit_then_lose_the_reply)
    assert not ws.run_at(T0).ok
    assert server.mailbox == []
    monkeypatch.undo()
    assert ws.run_at(T0 + timedelta(minutes=1)).ok
    times = ledger_times(ws)
    # Deleted by us (the request time), not "gone" as if another client took them.
    assert all(d == r_at for d, g, r_at in _with_request_time(times) if g is None)
    assert all(g is None for _, g, _ in times.values())


def _with_request_time(times: dict[str, tuple[Any, Any, Any]]) -> list[tuple[Any, Any, Any]]:
    return [(deleted, gone, deleted) for deleted, gone, _ in times.values() if deleted]


def test_messages_taken_by_another_client_are_marked_gone(ws, server) -> None:
    configure(ws, server)
    assert ws.run_at(T0).ok
    # Another mail client takes message 1 (stdlib poplib: an independent peer).
    client = poplib.POP3(server.host, server.port, timeout=5)
    client.user("bob")
    client.pass_(PASSWORD)
    client.dele(1)
    client.quit()
    assert ws.run_at(T0 + timedelta(hours=1)).ok
    times = ledger_times(ws)
    gone = [uidl for uidl, (_, g, _) in times.items() if g is not None]
    assert len(gone) == 1
    status = json.loads(ws.cli("status", "--json").out)
    assert status[0]["on_server"] == 5


def test_a_poison_message_is_set_aside_after_max_attempts(ws, server) -> None:
    server.fail_command("RETR", "-ERR [SYS/PERM] cannot read message", arg="2")
    configure(ws, server)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        result = ws.run_at(T0 + timedelta(minutes=attempt))
        assert not result.ok
        assert "cannot read message" in (result.error or "")
    assert len(result.set_aside) == 1
    retrs_before = server.commands.count("RETR 2")
    calm = ws.run_at(T0 + timedelta(hours=1))
    assert calm.ok, calm.error
    assert server.commands.count("RETR 2") == retrs_before, "set aside: not tried again"
    status = json.loads(ws.cli("status", "--json").out)
    assert status[0]["failed_messages"] == 1
    assert "retry-failed" in ws.cli("status").out

    server.clear_faults()
    retried = ws.cli("run", "--retry-failed")
    assert retried.code == 0, retried.output
    assert len(ws.archived_files("acct")) == 6
    assert json.loads(ws.cli("status", "--json").out)[0]["failed_messages"] == 0


def test_a_second_process_on_the_same_account_is_refused(ws, server) -> None:
    configure(ws, server)
    cfg = config_module.load(ws.config)
    with Ledger.open(cfg.ledger_url) as holder, holder.account_lock("acct"):
        result = ws.cli("run")
    assert result.code == 1
    assert "another popvault process" in result.out
    assert not any(c.startswith("RETR") for c in server.commands)
    # The refused run leaves no run row that would hide the other process's outcome.
    assert ws.ledger_rows("SELECT count(*) FROM runs") == [(0,)]
    assert ws.cli("run").code == 0


def test_status_shows_due_and_next_deletion(ws, server) -> None:
    configure(ws, server, retention="10d")
    assert ws.run_at(datetime.now(UTC) - timedelta(days=11)).ok
    server.add_message(b"From: a@x\r\nSubject: new\r\n\r\nnew\r\n")
    # Ten days after the first six were archived is one day ago: not yet due then.
    second = ws.run_at(datetime.now(UTC) - timedelta(days=2))
    assert second.ok
    assert second.deleted == 0
    (row,) = json.loads(ws.cli("status", "--json").out)
    assert row["due_for_deletion"] == 6
    assert row["on_server"] == 7
    assert row["retention"] == "after 10d"
    next_at = datetime.fromisoformat(row["next_deletion_at"])
    assert timedelta(days=7, hours=23) < next_at - datetime.now(UTC) <= timedelta(days=8)


def test_messages_under_a_repeated_uidl_are_archived_and_deleted_each_once(ws) -> None:
    raws = sample_messages(3)
    uidls = ["u-1", "u-dup", "u-dup"]
    with FakePop3Server(raws, uidls=uidls, username="bob", password=PASSWORD) as srv:
        configure(ws, srv, retention="delete")
        result = ws.run_at(T0)
        assert result.ok, result.error
        assert result.messages == 3
        assert sorted(srv.deleted) == ["u-1", "u-dup", "u-dup"]
        assert srv.mailbox == []
        assert ws.ledger_rows("SELECT count(*) FROM messages WHERE uidl = 'u-dup'") == [(2,)]


def test_a_reused_uidl_with_another_size_is_not_deleted(ws, server) -> None:
    configure(ws, server, retention="1d")
    assert ws.run_at(T0).ok
    # The server now shows a different message under the first UIDL (a reused id).
    uidl, raw = server.mailbox[0]
    with FakePop3Server(
        [raw + b"X-Changed: yes\r\n"] + [r for _, r in server.mailbox[1:]],
        uidls=[u for u, _ in server.mailbox],
        username="bob",
        password=PASSWORD,
    ) as changed:
        configure(ws, changed, retention="1d")
        result = ws.run_at(T0 + timedelta(days=2))
        assert result.ok, result.error
        assert result.deleted == 5
        assert [u for u, _ in changed.mailbox] == [uidl]
        # The message now under the reused UIDL has other content: it is archived too.
        assert result.messages == 1
        assert maildir_form(wire_form(changed.mailbox[0][1])) in {
            path.read_bytes() for path in ws.archived_files("acct")
        }


def test_stop_ends_the_run_cleanly_between_messages(ws, server) -> None:
    configure(ws, server, retention="delete")
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    cfg = config_module.load(ws.config)
    with Ledger.open(cfg.ledger_url) as ledger:
        result = sync_account(cfg, cfg.accounts[0], ledger, clock=lambda: T0, stop=stop_after_two)
    assert result.ok, result.error
    assert result.interrupted
    assert result.messages == 2
    assert result.deleted == 0, "a stopping run deletes nothing"
    assert server.commands[-1] == "QUIT"
    assert len(server.mailbox) == 6
    assert len(ws.archived_files("acct")) == 2


def test_messages_a_mail_reader_moved_to_cur_verify_and_are_deleted(ws, server) -> None:
    configure(ws, server, retention="1d")
    assert ws.run_at(T0).ok
    cur = ws.archive / "acct" / "cur"
    for path in ws.archived_files("acct"):
        path.rename(cur / f"{path.name}:2,S")  # read in a mail client
    report = ws.cli("verify", "--json")
    assert report.code == 0, report.output
    assert json.loads(report.out)[0]["checked"] == 6
    later = ws.run_at(T0 + timedelta(days=2))
    assert later.ok, later.error
    assert later.deleted == 6
    assert server.mailbox == []
