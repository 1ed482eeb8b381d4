"""The ledger's tables, as SQLAlchemy Core tables.

These tables describe the schema that the Alembic migrations build, and a new
ledger is created from them directly (``migrate.create_fresh``), so the two
must be the same schema down to constraint names and column order:
tests/ledger/test_ledger_fresh_schema.py compares them. Columns therefore keep
the order in which the migrations added them (``occurrence`` came with 0002,
after the 0001 columns), and a migration names a constraint through ``op.f()``
so that the naming convention below does not prefix it twice. Code outside
``popvault.ledger`` never sees them: the facade hands out plain dataclasses.

Core, not the ORM: the ledger never loads mapped objects (every query selects
columns and every write is a Core insert/update), and ``sqlalchemy.orm`` costs
~50 ms to import, a sixth of a no-op ``popvault run``. Each table keeps a class
of its name (:class:`Message`, :class:`Run`, ...) whose attributes are its
columns, so that queries read ``Message.uidl`` and ``insert(Message)`` as they
did with the ORM.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.schema import DDL

# Stable constraint names, so that migrations (and SQLite batch rebuilds) can
# refer to constraints by name on every backend. A CHECK takes its short name
# (``name="state"`` -> ck_messages_state); a full name given without op.f() or
# conv() is prefixed once more, which is how 0001 made ck_messages_ck_messages_state
# (renamed by 0004). Alembic applies this convention to its ops too, because
# migrations/env.py passes this metadata as target_metadata.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A message that keeps failing is no state of its own: it has no file, so it
# lives in `failures`, and every messages row keeps honest NOT NULL columns.
MESSAGE_STATES = ("pending", "archived")
# Where an imported UIDL comes from: another fetcher's state file, or a
# Maildir it wrote (popvault.importing; issue 12).
IMPORT_SOURCES = ("getmail6", "fetchmail", "mpop", "maildir")
# interrupted: the run's process died before it recorded an outcome (found by the
# account's next run, or by `status` seeing the account's lock free).
RUN_OUTCOMES = ("running", "ok", "failed", "interrupted")


def binary_string() -> String:
    """A string compared byte for byte on every backend.

    UIDLs are opaque and case-sensitive (RFC 1939 section 7): "abc" and "ABC"
    are two messages. SQLite's BINARY collation is its default; PostgreSQL's
    default follows the database locale, so ask for "C" there explicitly.
    """
    return String(collation="BINARY").with_variant(String(collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value
    is stored as naive UTC and made aware again on the way out. Naive values
    are refused on write: their zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC for SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Give back an aware datetime in UTC."""
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            raise TypeError(f"unexpected timestamp value {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base:
    """The base of the table classes: the ledger's metadata, and each class's table.

    ``__clause_element__`` lets SQLAlchemy take the class where it takes a
    table (``insert(Message)``, ``update(Message)``, ``delete(Message)``).
    """

    metadata: ClassVar[MetaData] = metadata
    __table__: ClassVar[Table]

    @classmethod
    def __clause_element__(cls) -> Table:
        """The class's table."""
        return cls.__table__


def _in_check(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Message(Base):
    """One message of one account: pending while its file is being made
    durable, archived once the ledger vouches for it.

    A message is identified by (account, uidl, occurrence), not by its UIDL
    alone. RFC 1939 section 7 wants a UIDL unique within a maildrop, but
    servers that derive UIDLs from the content (mbox servers do) list two
    byte-identical messages under one UIDL, and popvault must archive each
    listed message exactly once. ``occurrence`` is 1 for the first message
    recorded under a UIDL, 2 for the second, and so on; the orchestrator
    matches a session's listing to these rows (by size, then order, and by
    SHA-256 of the content when in doubt). Nearly every UIDL has only
    occurrence 1, which is why a plain UIDL means that one in the facade.

    An archived row is *retained* while ``deleted_at`` and ``gone_at`` are
    NULL: as far as popvault knows the server still has the message.
    ``delete_requested_at`` is set between an accepted DELE and QUIT's +OK,
    the window in which RFC 1939 section 6 leaves the deletion unknown.

    A *hold* (``hold_reason`` and ``held_at``) forbids retention to delete
    the server copy until the user releases it: e.g. the octets received
    (``received_size``) differ from the size the server's LIST announced, a
    server that substituted a message, so the archived file may not be the
    message the server would delete.
    """

    __table__ = Table(
        "messages",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("account", binary_string(), nullable=False),
        Column("uidl", binary_string(), nullable=False),
        Column("state", String(16), nullable=False),
        # Octets can pass 2**31 (a 2 GiB message, a run's total): 64-bit columns.
        Column("size", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("path", Text, nullable=False),
        Column("server_size", BigInteger),
        Column("first_seen_at", UTCDateTime(), nullable=False),
        Column("archived_at", UTCDateTime()),
        Column("deleted_at", UTCDateTime()),
        Column("gone_at", UTCDateTime()),
        Column("delete_requested_at", UTCDateTime()),
        # Rows written before occurrences existed are the first (and only) one.
        Column("occurrence", Integer, default=1, server_default="1", nullable=False),
        # Octets popvault received for the message, line ends counted as CRLF (as
        # the server's LIST counts them, RFC 1939 section 5), whatever the store
        # wrote; NULL for rows recorded before popvault kept it.
        Column("received_size", BigInteger),
        # NULL: retention may delete the server copy; else why it must not.
        Column("hold_reason", Text),
        Column("held_at", UTCDateTime()),
        UniqueConstraint("account", "uidl", "occurrence"),
        Index("ix_messages_account_state", "account", "state"),
        CheckConstraint(_in_check("state", MESSAGE_STATES), name="state"),
        CheckConstraint("size >= 0", name="size"),
        CheckConstraint("length(sha256) = 64", name="sha256"),
        CheckConstraint("state = 'pending' OR archived_at IS NOT NULL", name="archived_at"),
        CheckConstraint("occurrence >= 1", name="occurrence"),
        CheckConstraint("received_size >= 0", name="received_size"),
        # A hold always says since when: a reason without a time is a half-written hold.
        CheckConstraint("hold_reason IS NULL OR held_at IS NOT NULL", name="held_at"),
    )

    id: ClassVar[ColumnElement[int]] = __table__.c.id
    account: ClassVar[ColumnElement[str]] = __table__.c.account
    uidl: ClassVar[ColumnElement[str]] = __table__.c.uidl
    occurrence: ClassVar[ColumnElement[int]] = __table__.c.occurrence
    state: ClassVar[ColumnElement[str]] = __table__.c.state
    size: ClassVar[ColumnElement[int]] = __table__.c.size
    sha256: ClassVar[ColumnElement[str]] = __table__.c.sha256
    path: ClassVar[ColumnElement[str]] = __table__.c.path
    server_size: ClassVar[ColumnElement[int | None]] = __table__.c.server_size
    first_seen_at: ClassVar[ColumnElement[datetime]] = __table__.c.first_seen_at
    archived_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.archived_at
    deleted_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.deleted_at
    gone_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.gone_at
    delete_requested_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.delete_requested_at
    received_size: ClassVar[ColumnElement[int | None]] = __table__.c.received_size
    hold_reason: ClassVar[ColumnElement[str | None]] = __table__.c.hold_reason
    held_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.held_at


# status and `popvault held` count and list the held messages: a few among
# millions, found through a partial index without reading the rest (migration
# 0008 makes it with this statement). Made by DDL after the table, not as an
# Index(postgresql_where=..., sqlite_where=...): those keywords load both
# dialects when the models are imported, and a SQLite run must not load the
# PostgreSQL one (tests/test_import_run_path.py). The statement is the same
# on both.
HELD_INDEX_DDL = "CREATE INDEX ix_messages_held ON messages (account) WHERE hold_reason IS NOT NULL"
event.listen(Message.__table__, "after_create", DDL(HELD_INDEX_DDL))  # type: ignore[no-untyped-call]


def compared_by_autogenerate(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: leave out the index the metadata makes by DDL.

    Autogenerate compares the database with the metadata's Index objects and
    would offer to drop ix_messages_held; tests/ledger/test_ledger_fresh_schema.py
    compares the catalogs themselves, that index included.
    """
    return not (type_ == "index" and name == "ix_messages_held")


class AccountTotals(Base):
    """Each account's archived messages and their octets, kept in step with ``messages``.

    ``popvault status`` and a starting daemon show every account's totals:
    counted from ``messages`` that reads every row (5 s at 10 million).
    A row becomes archived in one place only (``mark_archived_many``), and
    the same transaction adds it here; archived rows are never deleted or
    made pending again, so the counts only grow. Recording an account's
    first (pending) messages makes its row: every account with messages has
    one. Migration 0008 counted the rows already there. ``popvault db copy``
    carries the table like the others.
    """

    __table__ = Table(
        "account_totals",
        metadata,
        Column("account", binary_string(), primary_key=True),
        Column("archived_messages", BigInteger, nullable=False),
        Column("archived_octets", BigInteger, nullable=False),
        CheckConstraint("archived_messages >= 0", name="archived_messages"),
        CheckConstraint("archived_octets >= 0", name="archived_octets"),
    )

    account: ClassVar[ColumnElement[str]] = __table__.c.account
    archived_messages: ClassVar[ColumnElement[int]] = __table__.c.archived_messages
    archived_octets: ClassVar[ColumnElement[int]] = __table__.c.archived_octets


class Imported(Base):
    """A message another tool retrieved before popvault: *archived elsewhere*.

    ``popvault import`` records the UIDLs of getmail6's, fetchmail's or mpop's
    state file (``source_file`` is that file), or the messages it matched to
    the files of a Maildir such a tool wrote (``source_file`` is the file).
    A run never fetches a listed message whose UIDL is here and that the
    ledger has no row of (popvault.plan), and never deletes its server copy,
    because popvault holds no copy of its own, unless the import said so
    (``allow_delete``): then retention deletes it as if it had been archived
    at ``seen_at`` (when the other tool saw it, if its file says) or else at
    ``imported_at``. ``deleted_at`` is set once QUIT confirmed its DELE (RFC
    1939 section 6).

    One row per (account, UIDL): the other tools know a message by its UIDL
    alone, so every message the server lists under it is theirs. A second
    import of the same UIDL changes nothing, nor does one of a UIDL the
    ledger already has in ``messages``.
    """

    __table__ = Table(
        "imported",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("account", binary_string(), nullable=False),
        Column("uidl", binary_string(), nullable=False),
        Column("source", String(16), nullable=False),
        Column("source_file", Text, nullable=False),
        Column("seen_at", UTCDateTime()),
        Column("imported_at", UTCDateTime(), nullable=False),
        Column("allow_delete", Boolean(), nullable=False),
        Column("deleted_at", UTCDateTime()),
        UniqueConstraint("account", "uidl"),
        CheckConstraint(_in_check("source", IMPORT_SOURCES), name="source"),
    )

    id: ClassVar[ColumnElement[int]] = __table__.c.id
    account: ClassVar[ColumnElement[str]] = __table__.c.account
    uidl: ClassVar[ColumnElement[str]] = __table__.c.uidl
    source: ClassVar[ColumnElement[str]] = __table__.c.source
    source_file: ClassVar[ColumnElement[str]] = __table__.c.source_file
    seen_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.seen_at
    imported_at: ClassVar[ColumnElement[datetime]] = __table__.c.imported_at
    allow_delete: ClassVar[ColumnElement[bool]] = __table__.c.allow_delete
    deleted_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.deleted_at


class Run(Base):
    """One sync run of one account, from start to outcome."""

    __table__ = Table(
        "runs",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("account", binary_string(), nullable=False),
        Column("started_at", UTCDateTime(), nullable=False),
        Column("ended_at", UTCDateTime()),
        Column("outcome", String(16), nullable=False),
        Column("messages", Integer, default=0, server_default="0", nullable=False),
        Column("bytes", BigInteger, default=0, server_default="0", nullable=False),
        Column("error", Text),
        # How many UIDLs the server listed in this run; NULL if it never got that far.
        Column("on_server", Integer),
        # Sessions the run took: more than 1 with a server that hands out a
        # window of the mailbox (Gmail; popvault.plan.may_offer_more).
        # The server's default only: rows written at older revisions name no such column.
        Column("sessions", Integer, server_default="1", nullable=False),
        # status: each account's latest run, and latest success, in one probe each.
        Index("ix_runs_account_id", "account", "id"),
        Index("ix_runs_account_outcome_ended_at", "account", "outcome", "ended_at"),
        CheckConstraint(_in_check("outcome", RUN_OUTCOMES), name="outcome"),
        CheckConstraint("on_server >= 0", name="on_server"),
    )

    id: ClassVar[ColumnElement[int]] = __table__.c.id
    account: ClassVar[ColumnElement[str]] = __table__.c.account
    started_at: ClassVar[ColumnElement[datetime]] = __table__.c.started_at
    ended_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.ended_at
    outcome: ClassVar[ColumnElement[str]] = __table__.c.outcome
    messages: ClassVar[ColumnElement[int]] = __table__.c.messages
    bytes: ClassVar[ColumnElement[int]] = __table__.c.bytes
    error: ClassVar[ColumnElement[str | None]] = __table__.c.error
    on_server: ClassVar[ColumnElement[int | None]] = __table__.c.on_server
    sessions: ClassVar[ColumnElement[int]] = __table__.c.sessions


class Failure(Base):
    """A message of one account that failed to archive, and how often.

    After enough attempts the orchestrator sets it aside, so that one poison
    message (RETR always -ERR, or a file that cannot be stored) does not stop
    the rest of the mailbox. The row goes once the message archives.
    Failures are per message, so per (account, uidl, occurrence) like
    :class:`Message`.
    """

    __table__ = Table(
        "failures",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("account", binary_string(), nullable=False),
        Column("uidl", binary_string(), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("first_failed_at", UTCDateTime(), nullable=False),
        Column("last_failed_at", UTCDateTime(), nullable=False),
        Column("last_error", Text, nullable=False),
        Column("occurrence", Integer, default=1, server_default="1", nullable=False),
        UniqueConstraint("account", "uidl", "occurrence"),
        CheckConstraint("attempts >= 1", name="attempts"),
        CheckConstraint("occurrence >= 1", name="occurrence"),
    )

    id: ClassVar[ColumnElement[int]] = __table__.c.id
    account: ClassVar[ColumnElement[str]] = __table__.c.account
    uidl: ClassVar[ColumnElement[str]] = __table__.c.uidl
    occurrence: ClassVar[ColumnElement[int]] = __table__.c.occurrence
    attempts: ClassVar[ColumnElement[int]] = __table__.c.attempts
    first_failed_at: ClassVar[ColumnElement[datetime]] = __table__.c.first_failed_at
    last_failed_at: ClassVar[ColumnElement[datetime]] = __table__.c.last_failed_at
    last_error: ClassVar[ColumnElement[str]] = __table__.c.last_error


class Schedule(Base):
    """When a running daemon will next archive an account, and how it is faring.

    Written by ``popvault daemon`` whenever it (re)schedules the account, read
    by ``popvault status``. ``daemon_pid`` and ``daemon_host`` name the writer,
    ``updated_at`` is refreshed while it lives: a row whose daemon is gone is
    stale, and ``status`` ignores it.
    """

    __table__ = Table(
        "schedules",
        metadata,
        Column("account", binary_string(), primary_key=True),
        Column("next_run_at", UTCDateTime()),
        Column("consecutive_failures", Integer, default=0, server_default="0", nullable=False),
        Column("backoff_reason", Text),
        Column("daemon_pid", Integer, nullable=False),
        # RFC 1035 section 2.3.4: a host name is at most 255 octets.
        Column("daemon_host", String(255), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        # The daemons' claim of due accounts, every second (ledger/dispatch.py).
        Index("ix_schedules_next_run_at", "next_run_at"),
        CheckConstraint("consecutive_failures >= 0", name="consecutive_failures"),
    )

    account: ClassVar[ColumnElement[str]] = __table__.c.account
    next_run_at: ClassVar[ColumnElement[datetime | None]] = __table__.c.next_run_at
    consecutive_failures: ClassVar[ColumnElement[int]] = __table__.c.consecutive_failures
    backoff_reason: ClassVar[ColumnElement[str | None]] = __table__.c.backoff_reason
    daemon_pid: ClassVar[ColumnElement[int]] = __table__.c.daemon_pid
    daemon_host: ClassVar[ColumnElement[str]] = __table__.c.daemon_host
    updated_at: ClassVar[ColumnElement[datetime]] = __table__.c.updated_at


class Lease(Base):
    """Which daemon holds an account now, until when, and under which fencing token.

    One row per account that was ever claimed (``popvault.ledger.leases``).
    ``token`` grows by one with every claim and the row is never deleted, so
    the row itself is the account's token counter: a token is never given
    out twice, and ``popvault db copy`` carries the counter with the row.
    ``owner_host``, ``owner_pid`` and ``daemon_id`` (random, one per daemon
    process: a restarted daemon is a new owner) name the holder; the lease is
    free once ``expires_at`` has passed (a release sets it to the release
    time). ``server_host`` is the POP3 server the holder's session talks to,
    when the claimer says: live leases counted per server bound the sessions
    one server gets from every daemon together (issue 11, ``max_per_host``).
    """

    __table__ = Table(
        "leases",
        metadata,
        Column("account", binary_string(), primary_key=True),
        # 64 bits: a token per claim, every 10 s for centuries, never wraps.
        Column("token", BigInteger, nullable=False),
        # RFC 1035 section 2.3.4: a host name is at most 255 octets.
        Column("owner_host", String(255), nullable=False),
        Column("owner_pid", Integer, nullable=False),
        Column("daemon_id", String(64), nullable=False),
        Column("claimed_at", UTCDateTime(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
        Column("server_host", String(255)),
        Index("ix_leases_server_host_expires_at", "server_host", "expires_at"),
        CheckConstraint("token >= 1", name="token"),
    )

    account: ClassVar[ColumnElement[str]] = __table__.c.account
    token: ClassVar[ColumnElement[int]] = __table__.c.token
    owner_host: ClassVar[ColumnElement[str]] = __table__.c.owner_host
    owner_pid: ClassVar[ColumnElement[int]] = __table__.c.owner_pid
    daemon_id: ClassVar[ColumnElement[str]] = __table__.c.daemon_id
    claimed_at: ClassVar[ColumnElement[datetime]] = __table__.c.claimed_at
    expires_at: ClassVar[ColumnElement[datetime]] = __table__.c.expires_at
    server_host: ClassVar[ColumnElement[str | None]] = __table__.c.server_host


class LedgerIdentity(Base):
    """Which ledger this is: one row, made with the ledger, never changed.

    ``id`` is 32 random hex digits (``secrets.token_hex(16)``), written by
    migration 0006 or by :func:`~popvault.ledger.migrate.create_fresh`. The
    archive root keeps it in its marker file (``popvault.store.marker``), so
    that a daemon whose archive root is not the one this ledger's files live
    in refuses to start. ``popvault db copy`` carries the row to its target:
    the copy is the same ledger, of the same archive files.
    """

    __table__ = Table(
        "ledger_identity",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("created_at", UTCDateTime(), nullable=False),
    )

    id: ClassVar[ColumnElement[str]] = __table__.c.id
    created_at: ClassVar[ColumnElement[datetime]] = __table__.c.created_at
