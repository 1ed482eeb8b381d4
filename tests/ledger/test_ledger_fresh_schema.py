"""A new ledger made from the models (no Alembic) is the ledger the migrations build (issue 9).

``upgrade`` creates a ledger with none of its tables straight from the models'
metadata and stamps it at the head revision (``migrate.create_fresh``). That is
only sound while the migrations, run from nothing, give the very same schema:
tables, columns in order with their types, nullability and defaults, indexes,
and unique, check, primary and foreign key constraints with their names. Both
are compared here through SQLAlchemy's inspector and each backend's own
catalogue (SQLite's ``sqlite_master``, PostgreSQL's ``pg_constraint`` and
friends), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import migrate as alembic_to
from sqlalchemy import Connection, Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from popvault.ledger import current, upgrade
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import HEAD_REVISION, create_fresh
from popvault.ledger.models import metadata
from postgres import LEDGER_TABLES

Snapshot = dict[str, Any]

# 0001 created these CHECK constraints with the table prefix twice; 0004 renames them.
DOUBLED = {
    "messages": ("state", "size", "sha256", "archived_at"),
    "runs": ("on_server",),
    "failures": ("attempts",),
    "schedules": ("consecutive_failures",),
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A function giving an empty ledger URL each call (SQLite: a new file; PostgreSQL:
    the module's database, emptied: a snapshot is taken before the next call)."""
    calls = iter(range(100))

    def empty_url() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/ledger-{next(calls)}.sqlite3"
        url: str = request.getfixturevalue("postgres_url")
        _empty_postgres(url)
        return url

    return empty_url


def _empty_postgres(url: str) -> None:
    engine = create_ledger_engine(parse_url(url))
    try:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {', '.join(LEDGER_TABLES)} CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def engine_for() -> Iterator[Any]:
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engines.append(create_ledger_engine(parse_url(url)))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def snapshot(engine: Engine) -> Snapshot:
    """The whole schema of a ledger (and its revision), as plain comparable data."""
    with engine.connect() as connection:
        shot: Snapshot = {
            "revision": connection.execute(text("SELECT version_num FROM alembic_version")).all(),
            "inspector": _inspected(connection),
        }
        if engine.dialect.name == "sqlite":
            shot["sqlite_master"] = _sqlite_master(connection)
        else:
            shot["pg_catalog"] = _pg_catalog(connection)
    return shot


def _inspected(connection: Connection) -> Snapshot:
    inspector = inspect(connection)
    dialect = connection.dialect
    tables: Snapshot = {}
    for table in sorted(inspector.get_table_names()):
        columns = [
            {
                "name": column["name"],
                "type": str(column["type"].compile(dialect=dialect)),
                "nullable": column["nullable"],
                "default": column.get("default"),
                "autoincrement": column.get("autoincrement"),
            }
            for column in inspector.get_columns(table)
        ]
        pk = inspector.get_pk_constraint(table)
        tables[table] = {
            "columns": columns,  # in order: the order is part of the schema
            "primary_key": (pk["name"], pk["constrained_columns"]),
            "foreign_keys": sorted(
                (
                    fk["name"],
                    fk["constrained_columns"],
                    fk["referred_table"],
                    fk["referred_columns"],
                )
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (index["name"], index["column_names"], index["unique"])
                for index in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (unique["name"], unique["column_names"])
                for unique in inspector.get_unique_constraints(table)
            ),
            "checks": sorted(
                (check["name"], check["sqltext"])
                for check in inspector.get_check_constraints(table)
            ),
        }
    return tables


def _sqlite_master(connection: Connection) -> list[tuple[str, str, str, object]]:
    rows = connection.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    return sorted((kind, name, table, _normal_ddl(sql)) for kind, name, table, sql in rows)


def _normal_ddl(sql: str | None) -> object:
    """A CREATE statement with what a batch rebuild changes and SQLite ignores taken out.

    Alembic's SQLite rebuild renames the copy into place, which quotes the table
    name, and appends the constraints it adds after the reflected ones; an
    ALTER TABLE ADD COLUMN (no rebuild) writes its column on the line of the
    one before. Column definitions keep their order; table constraints are
    compared as a set.
    """
    if sql is None or not sql.startswith("CREATE TABLE"):
        return sql
    head, _, body = sql.partition("(")
    name = head.removeprefix("CREATE TABLE").strip().strip('"')
    parts = _top_level_parts(body.rstrip().removesuffix(")"))
    columns = [part for part in parts if not part.startswith("CONSTRAINT ")]
    constraints = sorted(part for part in parts if part.startswith("CONSTRAINT "))
    return (name, columns, constraints)


def _top_level_parts(body: str) -> list[str]:
    """``body`` split at the commas outside parentheses (a CHECK's IN list keeps its own)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:index].strip())
            start = index + 1
    parts.append(body[start:].strip())
    return parts


def _pg_catalog(connection: Connection) -> Snapshot:
    columns = connection.execute(
        text(
            "SELECT table_name, ordinal_position, column_name, data_type, "
            "character_maximum_length, is_nullable, column_default, collation_name "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            "ORDER BY table_name, ordinal_position"
        )
    ).all()
    constraints = connection.execute(
        text(
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace "
            "ORDER BY 1, 2"
        )
    ).all()
    indexes = connection.execute(
        text(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() ORDER BY 1, 2"
        )
    ).all()
    return {
        "columns": [tuple(row) for row in columns],
        "constraints": [tuple(row) for row in constraints],
        "indexes": [tuple(row) for row in indexes],
    }


def fresh_snapshot(url: str, engine_for: Any) -> Snapshot:
    upgrade(url)  # a new ledger: the fast path
    return snapshot(engine_for(url))


def migrated_snapshot(url: str, engine_for: Any, revision: str = "head") -> Snapshot:
    engine = engine_for(url)
    alembic_to(engine, revision)
    return snapshot(engine)


def doubled_names(shot: Snapshot) -> set[str]:
    return {
        f"ck_{table}_ck_{table}_{short}" for table, shorts in DOUBLED.items() for short in shorts
    } & _all_check_names(shot)


def _all_check_names(shot: Snapshot) -> set[str]:
    return {name for table in shot["inspector"].values() for name, _ in table["checks"]}


def test_the_fast_path_builds_the_schema_the_migrations_build(backend: Any, engine_for) -> None:
    migrated = migrated_snapshot(backend(), engine_for)
    fresh = fresh_snapshot(backend(), engine_for)
    assert fresh == migrated
    # The snapshot holds what it should: a check that compares nothing passes vacuously.
    assert {"messages", "runs", "failures", "schedules", "alembic_version"} <= set(
        fresh["inspector"]
    )
    assert "ck_messages_state" in _all_check_names(fresh)
    assert fresh["revision"] == [(HEAD_REVISION,)]


def test_the_comparison_notices_a_constraint_name(backend: Any, engine_for) -> None:
    # 0004 only renames constraints: a ledger taken back to 0003 differs from a
    # fresh one in those names (and its revision), which the snapshot must see.
    fresh = fresh_snapshot(backend(), engine_for)
    url = backend()
    upgrade(url)
    engine = engine_for(url)
    alembic_to(engine, "0003", down=True)
    renamed = snapshot(engine)
    renamed["revision"] = fresh["revision"]
    assert renamed != fresh
    assert doubled_names(renamed) == doubled_names(migrated_snapshot(backend(), engine_for, "0003"))
    assert len(doubled_names(renamed)) == 7
    assert doubled_names(fresh) == set()


T0 = datetime(2025, 1, 1, tzinfo=UTC)
# One row or two in every table, through the models' tables (whose columns 0003 has too).
ROWS: dict[str, list[dict[str, Any]]] = {
    "messages": [
        {"account": "alice", "uidl": "Abc", "occurrence": 1, "state": "archived", "size": 10,
         "sha256": "a" * 64, "path": "cur/1", "first_seen_at": T0, "archived_at": T0,
         "received_size": 10},
        {"account": "alice", "uidl": "abc", "occurrence": 2, "state": "pending", "size": 0,
         "sha256": "b" * 64, "path": "tmp/2", "first_seen_at": T0, "archived_at": None,
         "received_size": None},
    ],
    "runs": [
        {"account": "alice", "started_at": T0, "ended_at": T0, "outcome": "interrupted",
         "messages": 1, "bytes": 10, "on_server": 2},
    ],
    "failures": [
        {"account": "alice", "uidl": "zz", "attempts": 3, "first_failed_at": T0,
         "last_failed_at": T0, "last_error": "-ERR no"},
    ],
    "schedules": [
        {"account": "alice", "next_run_at": T0, "daemon_pid": 42, "daemon_host": "host",
         "updated_at": T0},
    ],
}  # fmt: skip


def _contents(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, by column name: the columns the database has now.

    Columns a later migration adds (runs.sessions, 0008) are left out, so
    that the rows read before an upgrade compare with the rows after.
    """
    with engine.connect() as connection:
        present = {
            table: {c["name"] for c in inspect(connection).get_columns(table)} for table in ROWS
        }
        return {
            table: sorted(
                (
                    {key: value for key, value in row.items() if key not in _ADDED.get(table, ())}
                    for row in connection.execute(
                        select(*(c for c in metadata.tables[table].c if c.name in present[table]))
                    ).mappings()
                ),
                key=repr,
            )
            for table in ROWS
        }


# Columns added after 0003, with their server defaults: not among the rows compared.
_ADDED = {"runs": ("sessions",)}


def test_a_0003_ledger_upgrades_to_the_fresh_schema_and_keeps_its_rows(
    backend: Any, engine_for, tmp_path: Path
) -> None:
    url = backend()
    engine = engine_for(url)
    old = migrated_snapshot(url, engine_for, "0003")
    assert len(doubled_names(old)) == 7  # the ledgers out there
    with engine.begin() as connection:
        for table, rows in ROWS.items():
            connection.execute(insert(metadata.tables[table]), rows)
    before = _contents(engine)
    assert sum(map(len, before.values())) == 5

    upgrade(url)  # a ledger behind the head: Alembic, with a backup on SQLite

    assert current(url) == HEAD_REVISION
    upgraded = snapshot(engine)
    assert _contents(engine) == before
    if engine.dialect.name == "sqlite":
        assert len(list(tmp_path.glob("*.bak-0003-*"))) == 1
    assert upgraded == fresh_snapshot(backend(), engine_for)
    # The renamed rule still holds, under its new name.
    bad = {**ROWS["messages"][0], "uidl": "new", "state": "lost"}
    with pytest.raises(IntegrityError, match="ck_messages_state"), engine.begin() as connection:
        connection.execute(insert(metadata.tables["messages"]), bad)


def test_0004_goes_back_to_the_doubled_names(backend: Any, engine_for) -> None:
    at_0003 = migrated_snapshot(backend(), engine_for, "0003")
    url = backend()
    engine = engine_for(url)
    alembic_to(engine, "head")
    alembic_to(engine, "0003", down=True)
    assert snapshot(engine) == at_0003


def test_create_fresh_leaves_an_existing_ledger_to_the_migrations(backend: Any, engine_for) -> None:
    url = backend()
    engine = engine_for(url)
    alembic_to(engine, "0003")
    assert create_fresh(engine) is False  # not at head: the migrations' job
    assert current(url) == "0003"
    alembic_to(engine, "head")
    assert create_fresh(engine) is True  # at head already: nothing to do
    assert current(url) == HEAD_REVISION


_OPEN_AT = textwrap.dedent(
    """
    import json, sys, time
    url, start = sys.argv[1], float(sys.argv[2])
    from popvault.ledger import Ledger
    time.sleep(max(0.0, start - time.time()))  # every process starts at the same instant
    with Ledger.open(url) as ledger:
        accounts = ledger.accounts()
    print(json.dumps({"alembic": "alembic" in sys.modules, "accounts": accounts}))
    """
)


def test_processes_creating_one_new_ledger_at_once_all_succeed(backend: Any, engine_for) -> None:
    # The write lock (BEGIN IMMEDIATE / an advisory lock) is taken before the
    # tables are looked for: one process creates, the others wait and find it at head.
    for attempt in range(4):
        url = backend()
        start = f"{time.time() + 1.5:.3f}"  # after every interpreter has started
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AT, url, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [worker.communicate(timeout=120) for worker in workers]
        for worker, (out, err) in zip(workers, results, strict=True):
            assert worker.returncode == 0, f"attempt {attempt}: {err}"
            assert json.loads(out) == {"alembic": False, "accounts": []}, err
        engine = engine_for(url)
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert versions == [(HEAD_REVISION,)]
