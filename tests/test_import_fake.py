"""Messages archived elsewhere in a run (issue 12 part 1), against the fake server.

An imported UIDL is never retrieved, whatever the policy; its server copy is
deleted only when the import allowed it, by the policy's age counted from when
the other tool saw it, and never under a UIDL the server lists twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from popvault import config as config_module
from popvault.ledger import ImportedUidl, Ledger
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "import-Secret-42"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(8), username="bob", password=PASSWORD) as srv:
        yield srv


def configure(ws: Workspace, srv: FakePop3Server, **extra: Any) -> None:
    ws.write_config([fake_account(srv, "acct", **extra)])


def import_uidls(
    ws: Workspace,
    uidls: list[str],
    *,
    allow_delete: bool = False,
    seen_at: datetime | None = None,
    at: datetime = T0,
) -> None:
    cfg = config_module.load(ws.config)
    entries = [ImportedUidl(uidl, seen_at, "/state/file") for uidl in uidls]
    with Ledger.open(cfg.ledger_url) as ledger:
        ledger.record_imported("acct", entries, source="getmail6", allow_delete=allow_delete, at=at)


def retrieved(server: FakePop3Server) -> list[str]:
    """The UIDLs of the messages retrieved in sessions that ended with QUIT (each once)."""
    return server.downloaded


def retrs(server: FakePop3Server) -> int:
    return sum(1 for command in server.commands if command.startswith("RETR"))


@pytest.mark.parametrize("retention", ["keep", "delete", "7d"])
def test_imported_messages_are_never_retrieved_whatever_the_policy(
    ws: Workspace, server: FakePop3Server, retention: str
) -> None:
    configure(ws, server, retention=retention)
    uidls = [uidl for uidl, _ in server.mailbox]
    theirs, ours = uidls[::2], uidls[1::2]
    import_uidls(ws, theirs)

    result = ws.run_at(T0 + timedelta(days=30))

    assert result.ok, result.error
    assert result.messages == len(ours)
    assert sorted(retrieved(server)) == sorted(ours)
    # Without --allow-delete no imported copy is deleted, even by "delete".
    assert set(theirs) <= {uidl for uidl, _ in server.mailbox}
    # Only "delete" lets this run's own messages go at once ("7d": in a week).
    assert set(server.deleted) == (set(ours) if retention == "delete" else set())


def test_a_second_run_retrieves_nothing_more(ws: Workspace, server: FakePop3Server) -> None:
    configure(ws, server)
    import_uidls(ws, [uidl for uidl, _ in server.mailbox][:5])
    assert ws.run_at(T0).messages == 3

    again = ws.run_at(T0 + timedelta(hours=1))

    assert again.ok, again.error
    assert again.messages == 0
    assert again.planned == []


def test_allow_delete_deletes_by_age_since_the_other_tool_saw_them(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server, retention="14d")
    uidls = [uidl for uidl, _ in server.mailbox]
    old, recent = uidls[:3], uidls[3:5]
    import_uidls(ws, old, allow_delete=True, seen_at=T0 - timedelta(days=30))
    import_uidls(ws, recent, allow_delete=True, seen_at=T0 - timedelta(days=1))

    first = ws.run_at(T0)

    assert first.ok, first.error
    assert sorted(server.deleted) == sorted(old)
    assert first.deleted == len(old)
    assert not set(recent) & set(server.deleted)
    assert sorted(retrieved(server)) == sorted(uidls[5:])
    # 14 days after the recent ones were seen they go too; never retrieved.
    before = retrs(server)
    later = ws.run_at(T0 + timedelta(days=13, hours=1))
    assert later.ok, later.error
    assert set(recent) <= set(server.deleted)
    assert retrs(server) == before


def test_without_a_seen_time_the_age_counts_from_the_import(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server, retention="7d")
    uidl = server.mailbox[0][0]
    import_uidls(ws, [uidl], allow_delete=True, at=T0)

    early = ws.run_at(T0 + timedelta(days=6))
    assert early.ok, early.error
    assert uidl not in server.deleted
    due = ws.run_at(T0 + timedelta(days=7))
    assert due.ok, due.error
    assert uidl in server.deleted


def test_a_dry_run_counts_the_imported_deletions_and_deletes_nothing(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server, retention="delete")
    uidls = [uidl for uidl, _ in server.mailbox]
    import_uidls(ws, uidls[:2], allow_delete=True)

    result = ws.run_at(T0, dry_run=True)

    assert result.ok, result.error
    assert sorted(result.imported_due) == sorted(uidls[:2])
    assert server.deleted == []
    assert len(result.planned) == len(uidls) - 2


def test_a_uidl_the_server_lists_twice_is_never_deleted_as_imported(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    messages = sample_messages(3)
    # Two different messages under one UIDL (RFC 1939 section 7 forbids it): the
    # other tool kept one of them at most, and which one is unknowable.
    with FakePop3Server(
        messages, uidls=["twice", "twice", "once"], username="bob", password=PASSWORD
    ) as srv:
        configure(ws, srv, retention="delete")
        import_uidls(ws, ["twice", "once"], allow_delete=True)

        result = ws.run_at(T0)

        assert result.ok, result.error
        assert srv.deleted == ["once"]
        assert [uidl for uidl, _ in srv.mailbox] == ["twice", "twice"]
        assert result.messages == 0


def test_a_refused_dele_of_an_imported_message_is_not_marked_deleted(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server, retention="delete")
    uidls = [uidl for uidl, _ in server.mailbox]
    import_uidls(ws, uidls[:2], allow_delete=True)
    # Message 1 is the first imported one (the listing keeps the mailbox's order).
    server.fail_command("DELE", "-ERR [SYS/TEMP] not now", arg="1")

    result = ws.run_at(T0)

    assert uidls[1] in server.deleted
    assert uidls[0] not in server.deleted
    assert any("DELE" in error for error in result.message_errors)
    rows = dict(ws.ledger_rows("SELECT uidl, deleted_at FROM imported"))
    assert rows[uidls[0]] is None
    assert rows[uidls[1]] is not None
