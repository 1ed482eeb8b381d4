"""Migration 0002: occurrences and holds, upgrading a 0001 ledger that has rows, and back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from ledger_helpers import migrate
from sqlalchemy import Engine, bindparam, inspect, text
from sqlalchemy.exc import IntegrityError

from popvault.ledger import Ledger, MessageKey, current, upgrade
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import alembic_config
from popvault.ledger.models import UTCDateTime

T0 = datetime(2025, 1, 1, tzinfo=UTC)
# The newest revision: `upgrade` goes past 0002 to it.
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
ARCHIVED_AT = T0 + timedelta(minutes=1)
GONE_AT = T0 + timedelta(days=1)


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    eng = create_ledger_engine(parse_url(ledger_url))
    try:
        yield eng
    finally:
        eng.dispose()


MESSAGE_0001 = text(
    "INSERT INTO messages (account, uidl, state, size, sha256, path, server_size, "
    "first_seen_at, archived_at, deleted_at, gone_at) VALUES (:account, :uidl, :state, "
    ":size, :sha256, :path, :server_size, :first_seen_at, :archived_at, :deleted_at, :gone_at)"
).bindparams(
    *(bindparam(name, type_=UTCDateTime()) for name in ("first_seen_at", "archived_at")),
    *(bindparam(name, type_=UTCDateTime()) for name in ("deleted_at", "gone_at")),
)
FAILURE_0001 = text(
    "INSERT INTO failures (account, uidl, attempts, first_failed_at, last_failed_at, last_error) "
    "VALUES ('alice', :uidl, 2, :at, :at, '-ERR no')"
).bindparams(bindparam("at", type_=UTCDateTime()))

# uidl: (state, size, server_size, deleted, gone, held after the upgrade)
ROWS_0001: dict[str, tuple[str, int, int | None, bool, bool, bool]] = {
    "same-size": ("archived", 100, 100, False, False, False),
    "maildir-lf": ("archived", 95, 100, False, False, False),  # LF line ends: smaller
    "added-final-crlf": ("archived", 102, 100, False, False, False),  # within 2 octets
    "substituted": ("archived", 4096, 100, False, False, True),
    "substituted-gone": ("archived", 103, 100, False, True, True),  # it may come back
    "substituted-deleted": ("archived", 4096, 100, True, False, False),  # nothing to protect
    "substituted-pending": ("pending", 4096, 100, False, False, False),  # not archived yet
    "no-server-size": ("archived", 4096, None, False, False, False),
}


def fill_0001(engine: Engine) -> None:
    rows = [
        {
            "account": "alice",
            "uidl": uidl,
            "state": state,
            "size": size,
            "sha256": "a" * 64,
            "path": f"new/{uidl}",
            "server_size": server_size,
            "first_seen_at": T0,
            "archived_at": ARCHIVED_AT if state == "archived" else None,
            "deleted_at": GONE_AT if deleted else None,
            "gone_at": GONE_AT if gone else None,
        }
        for uidl, (state, size, server_size, deleted, gone, _) in ROWS_0001.items()
    ]
    with engine.begin() as connection:
        connection.execute(MESSAGE_0001, rows)
        connection.execute(FAILURE_0001, {"uidl": "poison", "at": T0})
        connection.execute(
            text(
                "INSERT INTO runs (account, started_at, outcome) VALUES ('alice', :at, 'ok')"
            ).bindparams(bindparam("at", type_=UTCDateTime())),
            {"at": T0},
        )


def columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def assert_bytewise(engine: Engine, table: str) -> None:
    """account and uidl still compare byte for byte (SQLite's batch rebuild must keep it)."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            query = text(
                "SELECT column_name, collation_name FROM information_schema.columns "
                "WHERE table_name = :t AND column_name IN ('account', 'uidl')"
            )
            collations = {
                row.column_name: row.collation_name
                for row in connection.execute(query, {"t": table})
            }
            assert collations == {"account": "C", "uidl": "C"}
        else:
            query = text("SELECT sql FROM sqlite_master WHERE name = :t")
            ddl = connection.execute(query, {"t": table}).scalar_one()
            assert 'uidl VARCHAR COLLATE "BINARY"' in ddl
            assert 'account VARCHAR COLLATE "BINARY"' in ddl


def hold_of(engine: Engine) -> dict[str, tuple[str | None, Any]]:
    query = text("SELECT uidl, hold_reason, held_at FROM messages WHERE account = 'alice'")
    with engine.connect() as connection:
        return {row.uidl: (row.hold_reason, row.held_at) for row in connection.execute(query)}


def test_upgrading_a_0001_ledger_keeps_its_rows_and_holds_substitutes(
    ledger_url: str, engine: Engine
) -> None:
    migrate(engine, "0001")
    fill_0001(engine)
    before = datetime.now(UTC)

    upgrade(ledger_url)

    after = datetime.now(UTC)
    assert current(ledger_url) == HEAD
    assert_bytewise(engine, "messages")
    assert_bytewise(engine, "failures")
    holds = hold_of(engine)
    held = {uidl for uidl, (reason, _) in holds.items() if reason is not None}
    assert held == {uidl for uidl, row in ROWS_0001.items() if row[5]}
    assert holds["substituted"][0] == (
        "archived by an earlier popvault: the stored copy has 4096 octets but the server listed 100"
    )
    assert holds["substituted-gone"][0] == (
        "archived by an earlier popvault: the stored copy has 103 octets but the server listed 100"
    )
    with Ledger.open(ledger_url, upgrade=False) as ledger:
        [held_message] = ledger.held("alice")  # the gone one is not retained
        assert held_message.key == MessageKey("substituted")
        assert (held_message.server_size, held_message.received_size) == (100, None)
        assert before - timedelta(seconds=1) <= held_message.held_at <= after
        assert held_message.held_at.tzinfo is UTC
        # Every row kept, as occurrence 1, with its times.
        rows = ledger.known_rows("alice", list(ROWS_0001))
        assert sorted(rows) == sorted(ROWS_0001)
        for uidl, (state, size, server_size, deleted, gone, _) in ROWS_0001.items():
            [row] = rows[uidl]
            assert (row.occurrence, row.state, row.size, row.server_size) == (
                1,
                state,
                size,
                server_size,
            )
            assert (row.deleted, row.gone) == (deleted, gone)
            assert row.archived_at == (ARCHIVED_AT if state == "archived" else None)
        [failure] = ledger.failures("alice")
        assert (failure.key, failure.attempts, failure.first_failed_at) == (
            MessageKey("poison"),
            2,
            T0,
        )
        assert ledger.status()[0].held_messages == 1
        # The new key works on the upgraded tables.
        ledger.record_pending(
            "alice",
            MessageKey("same-size", 2),
            path="new/second",
            size=100,
            sha256="b" * 64,
            server_size=100,
            first_seen_at=T0,
        )
        assert ledger.record_failure("alice", MessageKey("poison", 2), error="x", at=T0) == 1
        assert ledger.next_occurrence("alice", "same-size") == 3


def test_a_sqlite_ledger_is_backed_up_before_0002(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    eng = create_ledger_engine(parse_url(url))
    try:
        migrate(eng, "0001")
        fill_0001(eng)
    finally:
        eng.dispose()
    upgrade(url)
    [backup] = tmp_path.glob("ledger.sqlite3.bak-0001-*")
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        assert copy.execute("SELECT count(*) FROM messages").fetchone() == (len(ROWS_0001),)
    finally:
        copy.close()


def test_the_upgraded_tables_keep_their_constraints(ledger_url: str, engine: Engine) -> None:
    migrate(engine, "0001")
    fill_0001(engine)
    upgrade(ledger_url)
    insert = (
        "INSERT INTO messages (account, uidl, occurrence, state, size, sha256, path, "
        "first_seen_at) VALUES ('alice', :uidl, :occurrence, 'pending', 1, :sha, 'p', :at)"
    )
    statement = text(insert).bindparams(bindparam("at", type_=UTCDateTime()))
    good = {"uidl": "same-size", "occurrence": 2, "sha": "c" * 64, "at": T0}
    with engine.begin() as connection:
        connection.execute(statement, good)
    cases = [
        ({**good, "occurrence": 1}, r"UNIQUE|uq_messages_account_uidl_occurrence"),
        ({**good, "occurrence": 0}, "ck_messages_occurrence"),
        ({**good, "uidl": "x", "sha": "short"}, "ck_messages"),  # 0001's checks survive
        ({**good, "uidl": "SAME-SIZE", "occurrence": 2}, None),  # case-sensitive
    ]
    for params, error in cases:
        if error is None:
            with engine.begin() as connection:
                connection.execute(statement, params)
            continue
        with pytest.raises(IntegrityError, match=error), engine.begin() as connection:
            connection.execute(statement, params)


def test_downgrade_returns_to_0001_keeping_messages(ledger_url: str, engine: Engine) -> None:
    migrate(engine, "0001")
    fill_0001(engine)
    upgrade(ledger_url)
    with Ledger.open(ledger_url, upgrade=False) as ledger:
        ledger.record_failure("alice", MessageKey("poison", 2), error="x", at=T0)

    migrate(engine, "0001", down=True)

    assert current(ledger_url) == "0001"
    assert "occurrence" not in columns(engine, "messages")
    assert {"hold_reason", "held_at", "received_size"}.isdisjoint(columns(engine, "messages"))
    assert "occurrence" not in columns(engine, "failures")
    assert_bytewise(engine, "messages")
    assert_bytewise(engine, "failures")
    with engine.connect() as connection:
        uidls = connection.execute(text("SELECT uidl FROM messages ORDER BY uidl")).scalars()
        assert list(uidls) == sorted(ROWS_0001)
        failures = connection.execute(text("SELECT uidl, attempts FROM failures")).all()
        assert [tuple(row) for row in failures] == [("poison", 2)]  # occurrence 2 dropped
    # One row per (account, uidl) again.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (account, uidl, state, size, sha256, path, first_seen_at) "
                "VALUES ('alice', 'same-size', 'pending', 1, :sha, 'p', '2025-01-01')"
            ),
            {"sha": "d" * 64},
        )
    # And up again.
    upgrade(ledger_url)
    assert current(ledger_url) == HEAD
    assert {u for u, (r, _) in hold_of(engine).items() if r} == {"substituted", "substituted-gone"}


def test_downgrade_refuses_to_forget_a_second_occurrence(ledger_url: str, engine: Engine) -> None:
    upgrade(ledger_url)
    with Ledger.open(ledger_url, upgrade=False) as ledger:
        for occurrence in (1, 2):
            ledger.record_pending(
                "alice",
                MessageKey("same", occurrence),
                path=f"p{occurrence}",
                size=1,
                sha256="e" * 64,
                server_size=1,
                first_seen_at=T0,
            )
    with pytest.raises(CommandError, match=r"1 message\(s\) share a UIDL"):
        migrate(engine, "0001", down=True)
    assert current(ledger_url) == HEAD
    assert "occurrence" in columns(engine, "messages")
