"""Engine setup: URL mapping, SQLite pragmas and files, error mapping, redaction."""

from __future__ import annotations

import sqlite3
import stat
import threading
import traceback
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from popvault.errors import DatabaseUnavailable, LedgerError
from popvault.ledger import Ledger, engine
from popvault.ledger.engine import create_ledger_engine, parse_url, redact, scrub

SECRET = "s3cr3t-Pw%word"
QUOTED_SECRET = "s3cr3t-Pw%25word"


def chain_text(exc: BaseException) -> str:
    """Everything a logger could print about an exception, causes included."""
    parts = traceback.format_exception(exc)
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        parts.append(repr(seen))
        parts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return "".join(parts)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@h/db",
        "postgresql://u@h/db",
        "postgresql+psycopg://u@h/db",
    ],
)
def test_postgres_schemes_map_to_psycopg3(url: str) -> None:
    assert parse_url(url).drivername == "postgresql+psycopg"


def test_redact_hides_the_password() -> None:
    shown = redact(parse_url(f"postgresql://bob:{QUOTED_SECRET}@db.example/ledger"))
    assert "s3cr3t" not in shown
    assert "bob:***@db.example" in shown


def test_scrub_removes_raw_and_quoted_password() -> None:
    url = parse_url(f"postgresql://bob:{QUOTED_SECRET}@h/x")
    assert url.password == SECRET
    said = scrub(f"failed for {SECRET} and {QUOTED_SECRET}", url)
    assert said == "failed for *** and ***"


def test_invalid_url_message_does_not_echo_it() -> None:
    with pytest.raises(LedgerError) as caught:
        Ledger.open(f"not a url with {SECRET}")
    assert SECRET not in chain_text(caught.value)


def test_unsupported_backend_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="unsupported"):
        Ledger.open(f"mysql://bob:{QUOTED_SECRET}@localhost/x")


def test_unreachable_postgres_is_unavailable_and_redacted() -> None:
    url = f"postgresql://bob:{QUOTED_SECRET}@127.0.0.1:1/ledger"
    with pytest.raises(DatabaseUnavailable) as caught:
        Ledger.open(url)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "bob:***@" in message
    assert "s3cr3t" not in chain_text(caught.value)


@pytest.mark.postgres
def test_missing_postgres_database_is_unavailable_and_redacted(postgres_url: str) -> None:
    server = postgres_url.rsplit("/", 1)[0].replace("postgres@", f"postgres:{QUOTED_SECRET}@")
    with pytest.raises(DatabaseUnavailable, match="popvault_no_such_db") as caught:
        Ledger.open(f"{server}/popvault_no_such_db")
    assert "s3cr3t" not in chain_text(caught.value)


def test_sqlite_connection_pragmas(tmp_path) -> None:
    eng = create_ledger_engine(parse_url(f"sqlite:///{tmp_path}/l.sqlite3"))
    try:
        with eng.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        eng.dispose()
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
        "foreign_keys": 1,
        "busy_timeout": engine.SQLITE_BUSY_TIMEOUT_MS,
    }


def test_sqlite_folder_and_file_are_private(tmp_path) -> None:
    path = tmp_path / "deep" / "er" / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{path}"):
        pass
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_in_memory_ledger_works() -> None:
    with Ledger.open("sqlite://") as ledger:
        ledger.start_run("alice", started_at=datetime.now(UTC))
        assert ledger.accounts() == ["alice"]


def test_sqlite_file_that_cannot_be_created_is_unavailable(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseUnavailable):
        Ledger.open(f"sqlite:///{blocker}/ledger.sqlite3")


def test_locked_sqlite_past_the_timeout_is_unavailable(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    Ledger.open(url).close()
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            Ledger.open(url, upgrade=False) as ledger,
            pytest.raises(DatabaseUnavailable, match="locked"),
        ):
            ledger.start_run("alice", started_at=datetime.now(UTC))
    finally:
        holder.rollback()
        holder.close()


def test_writer_waits_for_a_short_lock(tmp_path) -> None:
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    Ledger.open(url).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.3, holder.execute, args=("ROLLBACK",))
    releaser.start()
    try:
        with Ledger.open(url, upgrade=False) as ledger:
            ledger.start_run("alice", started_at=datetime.now(UTC))
            assert ledger.accounts() == ["alice"]
    finally:
        releaser.join()
        holder.close()


def test_foreign_sqlalchemy_errors_do_not_escape(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with Ledger.open(url) as ledger:
        with ledger._engine.begin() as connection:
            connection.execute(text("DROP TABLE runs"))
        with pytest.raises(LedgerError, match="no such table"):
            ledger.accounts()


@pytest.mark.postgres
def test_postgres_sessions_commit_synchronously(postgres_url: str) -> None:
    eng = create_ledger_engine(parse_url(postgres_url))
    try:
        with eng.connect() as connection:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
            assert connection.exec_driver_sql("SHOW application_name").scalar() == "popvault"
    finally:
        eng.dispose()
