"""The UTC column type, and the ledger's import boundary."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, Table, create_engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError

import popvault.ledger
from popvault.ledger.models import UTCDateTime

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)


@settings(max_examples=200, deadline=None)
@given(value=aware)
def test_sqlite_round_trip_gives_the_same_instant_in_utc(value: datetime) -> None:
    engine = create_engine("sqlite://")
    table = Table("t", MetaData(), Column("at", UTCDateTime()))
    try:
        with engine.begin() as connection:
            table.create(connection)
            connection.execute(insert(table).values(at=value))
            got = connection.execute(select(table.c.at)).scalar_one()
    finally:
        engine.dispose()
    assert got == value
    assert got.tzinfo is UTC


def test_bind_stores_naive_utc_on_sqlite_and_aware_utc_on_postgres() -> None:
    value = datetime(2025, 1, 1, 3, 0, tzinfo=timezone(timedelta(hours=3)))
    column = UTCDateTime()
    on_sqlite = column.process_bind_param(value, sqlite.dialect())
    on_postgres = column.process_bind_param(value, postgresql.dialect())
    assert on_sqlite == datetime(2025, 1, 1, 0, 0)
    assert on_postgres == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert on_postgres is not None
    assert on_postgres.tzinfo is UTC


def test_naive_datetime_is_refused_by_the_column_type() -> None:
    engine = create_engine("sqlite://")
    table = Table("t", MetaData(), Column("at", UTCDateTime()))
    try:
        with engine.begin() as connection:
            table.create(connection)
            with pytest.raises(StatementError, match="naive datetime"):
                connection.execute(insert(table).values(at=datetime(2025, 1, 1)))
    finally:
        engine.dispose()


FORBIDDEN = ("popvault.pop3", "popvault.store", "popvault.config", "popvault.sync")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# Besides the ledger itself: the error tree, and the cycle collector's pause, which
# depends on nothing of popvault's (tests/test_import_rules.py holds it to that).
ALLOWED = ("popvault.errors", "popvault.gcpause")


def test_ledger_imports_only_sqlalchemy_alembic_errors_and_itself() -> None:
    package = Path(popvault.ledger.__file__).parent
    files = sorted(package.glob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
            if name.startswith("popvault"):
                assert name in ALLOWED or name.startswith("popvault.ledger"), name
