"""Fixtures for the ledger tests: a SQLite file and a real PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 (user postgres, trust auth). Each test module
gets its own database, ``popvault_test_<hex>``, dropped afterwards. If the
server cannot be reached the PostgreSQL tests skip, except under ``CI=true``,
where a missing server is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import event

import postgres
from popvault.ledger import Ledger


def _admin(dbname: str = "postgres") -> psycopg.Connection:
    return postgres.admin(dbname)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, as a ledger URL."""
    with postgres.databases("popvault_test") as make:
        yield make()


def reset_postgres(url: str) -> None:
    """Drop everything the ledger created, so each test starts from empty."""
    postgres.reset_ledger(url)


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
