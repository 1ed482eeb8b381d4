"""The tests' PostgreSQL (127.0.0.1:5432, user postgres, trust auth): an admin
connection and databases made on demand, dropped afterwards.

In CI (``CI=true``) an unreachable PostgreSQL fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"
SERVER = f"postgresql://{USER}@{HOST}:{PORT}"


def admin(dbname: str = "postgres") -> psycopg.Connection:
    """An autocommit connection as the superuser, to ``dbname``."""
    try:
        return psycopg.connect(
            host=HOST, port=PORT, user=USER, dbname=dbname, autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL on {HOST}:{PORT} unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def databases(prefix: str, server: str = SERVER) -> Iterator[Callable[[], str]]:
    """A maker of empty databases (``server/<prefix>_<random>`` URLs); all dropped at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"{prefix}_{secrets.token_hex(5)}"
        with admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return f"{server}/{name}"

    try:
        yield make
    finally:
        if made:
            with admin() as connection:
                for name in made:
                    connection.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )


# The ledger's tables, children first: dropped to start a test from empty.
LEDGER_TABLES = (
    "messages",
    "runs",
    "failures",
    "schedules",
    "leases",
    "ledger_identity",
    "account_totals",
    "imported",
    "alembic_version",
)


def reset_ledger(url: str) -> None:
    """Drop everything a ledger created in the database at ``url``."""
    with admin(url.rsplit("/", 1)[1]) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {', '.join(LEDGER_TABLES)} CASCADE")
