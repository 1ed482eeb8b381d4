"""Fixtures for the ledger tests: a SQLite file and a real PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 (user postgres, trust auth). Each test module
gets its own database, ``popvault_test_<hex>``, dropped afterwards. If the
server cannot be reached the PostgreSQL tests skip, except under ``CI=true``,
where a missing server is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event

from popvault.ledger import Ledger

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"


def _admin(dbname: str = "postgres") -> psycopg.Connection:
    try:
        return psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL on {PG_HOST}:{PG_PORT} unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, as a ledger URL."""
    name = f"popvault_test_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def reset_postgres(url: str) -> None:
    """Drop everything the ledger created, so each test starts from empty."""
    dbname = url.rsplit("/", 1)[1]
    with _admin(dbname) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS messages, runs, failures, schedules, alembic_version CASCADE"
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty ledger database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite3"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """An open, migrated ledger on each backend."""
    with Ledger.open(ledger_url) as opened:
        yield opened


@pytest.fixture
def statements(ledger: Ledger) -> list[str]:
    """Every SQL statement the ledger sends from now on (a query-count spy)."""
    seen: list[str] = []

    def spy(_conn, _cursor, statement, _params, _context, _executemany) -> None:
        seen.append(statement)

    event.listen(ledger._engine, "before_cursor_execute", spy)
    return seen
