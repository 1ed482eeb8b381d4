"""The ledger's tables, as SQLAlchemy 2.x typed ORM models.

These models describe the schema that the Alembic migrations build; a test
(``compare_metadata``) keeps the two in step. Code outside ``popvault.ledger``
never sees these classes: the facade hands out plain dataclasses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so that migrations (and SQLite batch rebuilds) can
# refer to constraints by name on every backend.
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


class Base(DeclarativeBase):
    """Declarative base holding the ledger's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


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

    __tablename__ = "messages"
    __table_args__ = (
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

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(binary_string())
    uidl: Mapped[str] = mapped_column(binary_string())
    # Rows written before occurrences existed are the first (and only) one.
    occurrence: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    state: Mapped[str] = mapped_column(String(16))
    # Octets can pass 2**31 (a 2 GiB message, a run's total): 64-bit columns.
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    server_size: Mapped[int | None] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    gone_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delete_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Octets popvault received for the message, line ends counted as CRLF (as
    # the server's LIST counts them, RFC 1939 section 5), whatever the store
    # wrote; NULL for rows recorded before popvault kept it.
    received_size: Mapped[int | None] = mapped_column(BigInteger)
    # NULL: retention may delete the server copy; else why it must not.
    hold_reason: Mapped[str | None] = mapped_column(Text)
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Run(Base):
    """One sync run of one account, from start to outcome."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_account", "account"),
        CheckConstraint(_in_check("outcome", RUN_OUTCOMES), name="outcome"),
        CheckConstraint("on_server >= 0", name="on_server"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(binary_string())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16))
    messages: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    # How many UIDLs the server listed in this run; NULL if it never got that far.
    on_server: Mapped[int | None] = mapped_column(Integer)


class Failure(Base):
    """A message of one account that failed to archive, and how often.

    After enough attempts the orchestrator sets it aside, so that one poison
    message (RETR always -ERR, or a file that cannot be stored) does not stop
    the rest of the mailbox. The row goes once the message archives.
    Failures are per message, so per (account, uidl, occurrence) like
    :class:`Message`.
    """

    __tablename__ = "failures"
    __table_args__ = (
        UniqueConstraint("account", "uidl", "occurrence"),
        CheckConstraint("attempts >= 1", name="attempts"),
        CheckConstraint("occurrence >= 1", name="occurrence"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account: Mapped[str] = mapped_column(binary_string())
    uidl: Mapped[str] = mapped_column(binary_string())
    occurrence: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str] = mapped_column(Text)


class Schedule(Base):
    """When a running daemon will next archive an account, and how it is faring.

    Written by ``popvault daemon`` whenever it (re)schedules the account, read
    by ``popvault status``. ``daemon_pid`` and ``daemon_host`` name the writer,
    ``updated_at`` is refreshed while it lives: a row whose daemon is gone is
    stale, and ``status`` ignores it.
    """

    __tablename__ = "schedules"
    __table_args__ = (CheckConstraint("consecutive_failures >= 0", name="consecutive_failures"),)

    account: Mapped[str] = mapped_column(binary_string(), primary_key=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    backoff_reason: Mapped[str | None] = mapped_column(Text)
    daemon_pid: Mapped[int] = mapped_column(Integer)
    # RFC 1035 section 2.3.4: a host name is at most 255 octets.
    daemon_host: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
