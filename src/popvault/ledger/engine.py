"""Engines for the ledger: URL handling, SQLite pragmas, error mapping.

The ledger takes a URL string and nothing else. ``postgres://`` and
``postgresql://`` mean psycopg 3; ``sqlite:///path`` means a file whose folder
is created (0700) if missing. Every SQLAlchemy error leaving this package is
mapped here, once, into the popvault tree, and no message ever carries the
database password.
"""

from __future__ import annotations

import glob
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import (
    ArgumentError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool

from popvault.errors import DatabaseUnavailable, LedgerDamaged, LedgerError

# How long a SQLite writer waits for another process's lock before we call the
# database unavailable. A sync run commits in milliseconds; 30 s covers a
# concurrent `popvault status` or a migration without hanging a daemon forever.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Pause between attempts to switch a new ledger to WAL while another connection holds it.
_WAL_RETRY_S = 0.02

# How long to wait for a PostgreSQL server to accept a connection (seconds).
PG_CONNECT_TIMEOUT_S = 10

# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE:
# it takes the write lock at once (waiting up to the busy timeout), so a
# read-then-write transaction cannot fail half-way with "database is locked".
WRITE_INTENT = "popvault_write_intent"

_POSTGRES_NAMES = frozenset({"postgres", "postgresql"})

# A SQLite ledger's copy before a schema upgrade is <file>.bak-<revision>-<UTC stamp>
# (migrate.backup_sqlite); a damaged ledger's error names them.
BACKUP_INFIX = ".bak-"


def parse_url(url: str) -> URL:
    """Parse a ledger URL, mapping bare PostgreSQL schemes to psycopg 3.

    The message of a parse error never repeats the URL: it may hold a password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise LedgerError(
            "the ledger URL is not a database URL "
            "(expected e.g. sqlite:///path/ledger.sqlite3 or postgresql://user@host/db)"
        ) from None
    if parsed.drivername in _POSTGRES_NAMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact(url: URL) -> str:
    """The URL as text with its password masked, fit for messages and logs."""
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None (in-memory or not SQLite)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_ledger_engine(url: URL) -> Engine:
    """Build an engine configured for the ledger's durability rules."""
    backend = url.get_backend_name()
    with _mapped_errors(url):
        if backend == "sqlite":
            return _sqlite_engine(url)
        if backend == "postgresql":
            return _postgres_engine(url)
        raise LedgerError(f"unsupported ledger database {redact(url)}: use sqlite or postgresql")


@contextmanager
def _mapped_errors(url: URL) -> Iterator[None]:
    try:
        yield
    except NoSuchModuleError:
        raise LedgerError(f"unsupported ledger database {redact(url)}") from None
    except ModuleNotFoundError as exc:
        raise LedgerError(
            f"the ledger database {redact(url)} needs the Python package {exc.name!r} "
            "(for PostgreSQL: pip install 'popvault[postgres]')"
        ) from None


def _sqlite_engine(url: URL) -> Engine:
    path = sqlite_file(url)
    if path is None:
        # One shared connection, or every checkout would see a new empty
        # in-memory database. Meant for tests; serialise access yourself.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        _prepare_file(path)
        engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _prepare_file(path: Path) -> None:
    """Create the ledger's folder (0700) and file (0600) if they are missing.

    The ledger names every message of the user's mailboxes: not for other
    users' eyes. SQLite gives its -wal and -shm files the database's mode, and
    an empty file is a valid empty database.
    """
    try:
        path.absolute().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create the ledger file {path}: {exc.strerror}") from exc


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Take BEGIN away from the sqlite3 module (it skips BEGIN before DDL and
    # SELECT), so that _sqlite_on_begin decides; see SQLAlchemy's pysqlite notes.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        # FULL: in WAL mode, NORMAL may lose the last commits on power loss;
        # the orchestrator deletes server copies once a commit returns.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database to WAL (a setting stored in the file), waiting out a race.

    Switching needs an exclusive lock, and when several connections open a new
    ledger at once SQLite may answer "database is locked" at once instead of
    calling the busy handler (it refuses to wait where waiting could deadlock).
    So retry, for as long as the busy timeout would have waited.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(WRITE_INTENT, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# A transaction idle this long is ended by PostgreSQL (see _postgres_engine); within
# the default lease heartbeat (10 s), so a stalled holder's row lock goes well
# before its lease would.
PG_IDLE_IN_TRANSACTION_S = 10


def _postgres_engine(url: URL) -> Engine:
    connect_args: dict[str, Any] = {
        "connect_timeout": PG_CONNECT_TIMEOUT_S,
        "application_name": "popvault",
        # A commit must be on disk before it returns, whatever the server's
        # default says: server copies are deleted on the strength of it.
        # idle_in_transaction_session_timeout: no write of ours leaves its transaction
        # idle for more than milliseconds; a holder stopped (SIGSTOP, a frozen VM)
        # inside a fenced write would keep its lease row locked, and so keep every
        # other daemon from claiming the account, for as long as its session lives.
        # jit=off: the ledger's queries are short and indexed; PostgreSQL's JIT
        # compiled the large ones (status over 10 million rows) for 0.1-1.5 s more
        # and gained nothing (benchmarks/ledger_scale.py).
        "options": (
            "-c synchronous_commit=on "
            f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_S}s "
            "-c jit=off"
        ),
        # TCP keepalives and a send timeout: a connection whose peer vanished
        # (a cut cable, a half-open connection behind a dead NAT) fails within
        # about 25 s (10 s idle, then 3 probes 5 s apart) instead of the kernel's
        # two hours, and a write to it within 30 s (tcp_user_timeout, in ms).
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    # pre_ping: a daemon outlives server restarts; test a pooled connection
    # before trusting it.
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Map SQLAlchemy errors raised inside the block into the popvault tree.

    Connection failures, lost connections and "database is locked" past the
    busy timeout become :class:`DatabaseUnavailable`; anything else from
    SQLAlchemy becomes :class:`LedgerError`.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        damaged = _damaged(exc, url)
        if damaged is not None:
            raise damaged from None
        if isinstance(exc, OperationalError | InterfaceError):
            # No chaining: a driver's connect error is not ours to vet for secrets.
            raise DatabaseUnavailable(
                f"ledger database {redact(url)} unavailable: {driver_reason(exc, url)}"
            ) from None
        raise LedgerError(f"ledger database {redact(url)}: {driver_reason(exc, url)}") from exc


def _damaged(exc: SQLAlchemyError, url: URL) -> LedgerDamaged | None:
    """A :class:`LedgerDamaged` when SQLite says its file is no sound database, else None.

    SQLITE_NOTADB: not a database at all (garbage, or another file); SQLITE_CORRUPT:
    "database disk image is malformed". Extended codes keep the primary one in the
    low byte (sqlite.org/rescode.html).
    """
    path = sqlite_file(url)
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    if path is None or not isinstance(code, int):
        return None
    if code & 0xFF not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return None
    return LedgerDamaged(damaged_message(path.absolute(), driver_reason(exc, url)))


def damaged_message(path: Path, reason: str) -> str:
    """What to tell the user about a damaged ledger file: what, which backups, how to restore.

    One line, in numbered steps: error texts pass a redaction point that
    escapes line breaks.
    """
    backups = sorted(
        path.parent.glob(glob.escape(path.name) + BACKUP_INFIX + "*"),
        key=lambda backup: backup.stat().st_mtime,
        reverse=True,
    )
    copies = (
        f"popvault copies the ledger next to itself before each schema upgrade, as "
        f"{path.name}{BACKUP_INFIX}<revision>-<UTC time>"
    )
    # SQLite's own companions: a stale -wal next to a restored copy would be replayed into it.
    steps = [
        "stop `popvault daemon` if one runs",
        f"move the damaged file and its -wal and -shm files (where they exist) aside: "
        f"mv {path} {path}.damaged; mv {path}-wal {path}-wal.damaged; "
        f"mv {path}-shm {path}-shm.damaged",
    ]
    if backups:
        more = f" ({len(backups)} in all)" if len(backups) > 1 else ""
        intro = f"{copies}; the newest is {backups[0]}{more}. To restore it:"
        steps += [
            f"cp -p {backups[0]} {path}",
            "popvault verify: it names the messages archived after the copy was made as "
            "unknown files; those still on the server are fetched again by the next run "
            "(a second copy)",
        ]
    else:
        intro = f"{copies}, but there is none in {path.parent}. To start again:"
        steps.append(
            "restore the file from your own backups, or let the next `popvault run` start a "
            "new ledger: it refuses an account whose archive folder holds files the new "
            "ledger does not know (README, 'A lost ledger')"
        )
    numbered = " ".join(f"({number}) {step}." for number, step in enumerate(steps, 1))
    return f"the ledger file {path} is damaged ({reason}). {intro} {numbered}"


def driver_reason(exc: BaseException, url: URL) -> str:
    """The driver's own words for an error, first line only, password scrubbed."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return scrub(first, url)


def scrub(text: str, url: URL) -> str:
    """Replace the URL's password, raw or percent-encoded, by ``***``."""
    password = url.password
    if not password:
        return text
    for form in {password, quote(password, safe="")}:
        text = text.replace(form, "***")
    return text


__all__ = [
    "BACKUP_INFIX",
    "SQLITE_BUSY_TIMEOUT_MS",
    "WRITE_INTENT",
    "create_ledger_engine",
    "damaged_message",
    "driver_reason",
    "parse_url",
    "redact",
    "scrub",
    "sqlite_file",
    "translate_errors",
]
