"""Migrations: upgrade, check, unknown revisions, backups, concurrency, drift."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from popvault.errors import SchemaMismatch
from popvault.ledger import UPGRADE_COMMAND, Ledger, check, current, upgrade
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import backup_sqlite, migrations_dir
from popvault.ledger.models import compared_by_autogenerate, metadata

HEAD = "0009"
T0 = datetime(2025, 1, 1, tzinfo=UTC)

NEXT = "0010"

DUMMY_NEXT = '''"""A later schema, for tests: runs get a note column."""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("note")
'''


@pytest.fixture
def newer_scripts(tmp_path: Path) -> Path:
    """Our migrations plus a dummy next one: a popvault one release ahead."""
    folder = tmp_path / "migrations-next"
    shutil.copytree(migrations_dir(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / f"{NEXT}_dummy.py").write_text(DUMMY_NEXT)
    return folder


def stamp(url: str, revision: str) -> None:
    eng = create_ledger_engine(parse_url(url))
    try:
        with eng.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))
            connection.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        eng.dispose()


def tables(url: str) -> set[str]:
    eng = create_ledger_engine(parse_url(url))
    try:
        return set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_migrations_folder_is_found() -> None:
    assert (migrations_dir() / "versions" / "0001_initial.py").is_file()


def test_upgrade_from_empty_reaches_head(ledger_url: str) -> None:
    assert current(ledger_url) is None
    upgrade(ledger_url)
    assert current(ledger_url) == HEAD
    assert {"messages", "runs", "failures", "alembic_version"} <= tables(ledger_url)
    check(ledger_url)  # does not raise
    upgrade(ledger_url)  # idempotent
    assert current(ledger_url) == HEAD


def test_check_on_unmigrated_db_names_the_command(ledger_url: str) -> None:
    with pytest.raises(SchemaMismatch, match=f"run `{UPGRADE_COMMAND}`"):
        check(ledger_url)
    assert UPGRADE_COMMAND == "popvault db upgrade"


def test_open_without_upgrade_refuses_an_empty_db(ledger_url: str) -> None:
    with pytest.raises(SchemaMismatch, match="popvault db upgrade"):
        Ledger.open(ledger_url, upgrade=False)
    assert current(ledger_url) is None  # and did not create anything


def test_unknown_revision_is_a_mismatch_and_is_never_touched(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.start_run("alice", started_at=T0)
    stamp(ledger_url, "ffff9999")
    with pytest.raises(SchemaMismatch, match="upgrade popvault"):
        check(ledger_url)
    with pytest.raises(SchemaMismatch, match="newer popvault"):
        upgrade(ledger_url)
    with pytest.raises(SchemaMismatch, match="ffff9999"):
        Ledger.open(ledger_url)
    assert current(ledger_url) == "ffff9999"


def test_behind_db_is_a_mismatch_for_a_newer_popvault(ledger_url: str, newer_scripts) -> None:
    upgrade(ledger_url)
    with pytest.raises(SchemaMismatch, match=rf"{HEAD}.*needs {NEXT}.*popvault db upgrade"):
        check(ledger_url, script_location=newer_scripts)


def test_upgrade_to_a_later_revision(ledger_url: str, newer_scripts) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.start_run("alice", started_at=T0)
    upgrade(ledger_url, script_location=newer_scripts)
    assert current(ledger_url) == NEXT
    with pytest.raises(SchemaMismatch, match="does not know"):
        check(ledger_url)  # this popvault only knows up to HEAD
    eng = create_ledger_engine(parse_url(ledger_url))
    try:
        with eng.connect() as connection:
            assert connection.execute(text("SELECT account, note FROM runs")).all() == [
                ("alice", None)
            ]
    finally:
        eng.dispose()


def test_sqlite_is_backed_up_before_an_upgrade(tmp_path: Path, newer_scripts) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    with Ledger.open(url) as ledger:
        ledger.start_run("alice", started_at=T0)
    assert list(tmp_path.glob("*.bak-*")) == []  # creating a schema backs nothing up

    upgrade(url, script_location=newer_scripts)

    [backup] = tmp_path.glob(f"ledger.sqlite3.bak-{HEAD}-*")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        assert copy.execute("SELECT account FROM runs").fetchall() == [("alice",)]
    copy.close()
    assert current(url) == NEXT


def test_backup_sqlite_copies_a_live_database(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{path}") as ledger:
        ledger.start_run("alice", started_at=T0)
        when = datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC)
        first = backup_sqlite(path, "0001", now=when)
        second = backup_sqlite(path, "0001", now=when)
    assert first.name == "ledger.sqlite3.bak-0001-20250203T040506Z"
    assert second.name == "ledger.sqlite3.bak-0001-20250203T040506Z.1"
    for copy_path in (first, second):
        copy = sqlite3.connect(copy_path)
        try:
            assert copy.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        finally:
            copy.close()


def race_upgrades(url: str, workers: int = 4) -> list[BaseException]:
    """Start ``workers`` upgrades of ``url`` at the same instant; return their errors."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            upgrade(url)
        except BaseException as exc:  # collected and re-checked by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_upgrades_do_not_collide(ledger_url: str) -> None:
    assert race_upgrades(ledger_url) == []
    assert current(ledger_url) == HEAD
    with Ledger.open(ledger_url, upgrade=False) as ledger:
        assert ledger.accounts() == []


def test_many_processes_opening_a_new_sqlite_ledger_at_once_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL races between first connections; SQLite may
    # answer "database is locked" without waiting. Repeat the race to catch it.
    for attempt in range(12):
        errors = race_upgrades(f"sqlite:///{tmp_path}/race-{attempt}.sqlite3")
        assert errors == [], f"attempt {attempt}: {errors}"


def test_models_match_the_migrations(ledger_url: str) -> None:
    upgrade(ledger_url)
    eng = create_ledger_engine(parse_url(ledger_url))
    try:
        with eng.connect() as connection:
            options = {"compare_type": True, "include_name": compared_by_autogenerate}
            context = MigrationContext.configure(connection, opts=options)
            diff = compare_metadata(context, metadata)
            indexes = {index["name"] for index in inspect(connection).get_indexes("messages")}
    finally:
        eng.dispose()
    assert diff == []
    assert "ix_messages_held" in indexes  # made by DDL, left out of the comparison above


def test_uidl_and_account_collation_is_bytewise(ledger_url: str) -> None:
    upgrade(ledger_url)
    eng = create_ledger_engine(parse_url(ledger_url))
    try:
        with eng.connect() as connection:
            if eng.dialect.name == "postgresql":
                query = text(
                    "SELECT column_name, collation_name FROM information_schema.columns "
                    "WHERE table_name = 'messages' AND column_name IN ('account', 'uidl')"
                )
                assert dict(connection.execute(query).all()) == {"account": "C", "uidl": "C"}
            else:
                query = text("SELECT sql FROM sqlite_master WHERE name = 'messages'")
                ddl = connection.execute(query).scalar_one()
                assert 'uidl VARCHAR COLLATE "BINARY"' in ddl
                assert 'account VARCHAR COLLATE "BINARY"' in ddl
    finally:
        eng.dispose()


MESSAGE_ROW = (
    "INSERT INTO messages (account, uidl, state, size, sha256, path, first_seen_at, archived_at) "
    "VALUES ('a', :uidl, :state, 1, :sha, 'p', '2025-01-01 00:00:00', :archived_at)"
)


@pytest.mark.parametrize(
    ("state", "archived_at"),
    [("failed", "2025-01-01 00:00:00"), ("archived", None)],
    ids=["no-failed-state", "archived-needs-a-time"],
)
def test_messages_constraints_keep_rows_honest(
    ledger_url: str, state: str, archived_at: str | None
) -> None:
    upgrade(ledger_url)
    eng = create_ledger_engine(parse_url(ledger_url))
    try:
        with eng.begin() as connection:  # a good row first: the statement itself is fine
            connection.execute(
                text(MESSAGE_ROW),
                {"uidl": "ok", "state": "pending", "sha": "0" * 64, "archived_at": None},
            )
        params = {"uidl": "bad", "state": state, "sha": "0" * 64, "archived_at": archived_at}
        with pytest.raises(IntegrityError, match="ck_messages"), eng.begin() as connection:
            connection.execute(text(MESSAGE_ROW), params)
    finally:
        eng.dispose()
