"""The ledger facade: what the rest of popvault knows about the database.

Callers get plain frozen dataclasses and popvault errors; no SQLAlchemy type
crosses this boundary. Every write commits before its method returns, and the
commit is durable (SQLite ``synchronous=FULL``; PostgreSQL
``synchronous_commit=on``): the orchestrator may delete the server's copy of a
message as soon as :meth:`Ledger.mark_archived` returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    case,
    delete,
    func,
    insert,
    select,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from popvault.errors import LedgerError
from popvault.ledger.engine import (
    WRITE_INTENT,
    create_ledger_engine,
    parse_url,
    redact,
    translate_errors,
)
from popvault.ledger.migrate import check_engine, upgrade_engine
from popvault.ledger.models import Message, Run

# Up to this many UIDLs are looked up with one `uidl IN (...)`; past it, one
# query reads every UIDL of the account and the difference is taken in
# Python. 500 stays far below SQLite's bound-parameter limit (999 before
# SQLite 3.32) and keeps the IN list cheap to plan on PostgreSQL.
_IN_LIST_LIMIT = 500

# Rows fetched per round trip when streaming archived messages.
_STREAM_BATCH = 1000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FINAL_OUTCOMES = frozenset({"ok", "failed"})


class DuplicateMessage(LedgerError):
    """``record_pending`` was called for a UIDL the account already has.

    The ledger keeps its single row; the caller should discard the copy it
    just wrote, since the ledger vouches for another one.
    """

    def __init__(self, account: str, uidl: str) -> None:
        self.account = account
        self.uidl = uidl
        super().__init__(f"account {account!r}: UIDL {uidl!r} is already in the ledger")


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message whose file was written but not yet vouched for."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """A message the ledger vouches for: its file is durable in the archive."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str
    archived_at: datetime


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What ``popvault status`` shows for one account.

    ``last_run_at`` is when the latest run started; ``last_outcome`` and
    ``last_error`` are that run's ("running" while it goes on);
    ``last_success_at`` is when the latest successful run ended.
    """

    name: str
    archived_messages: int
    archived_bytes: int
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    last_success_at: datetime | None


class Ledger:
    """The record of which messages of which account are safely archived.

    Open it with :meth:`open`; use it as a context manager or call
    :meth:`close`. A Ledger may be shared by threads (each call takes its own
    pooled connection), except for an in-memory SQLite ledger.
    """

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine made by :func:`create_ledger_engine`; prefer :meth:`open`."""
        self._engine = engine
        self._closed = False

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Ledger:
        """Connect to the ledger at ``url``, upgrading its schema if ``upgrade``.

        With ``upgrade=False`` a schema that is not current raises
        :class:`~popvault.errors.SchemaMismatch`. An unreachable database
        raises :class:`~popvault.errors.DatabaseUnavailable`.
        """
        engine = create_ledger_engine(parse_url(url))
        try:
            if upgrade:
                upgrade_engine(engine)
            else:
                check_engine(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return redact(self._engine.url)

    def __repr__(self) -> str:
        return f"<Ledger {self.url}>"

    def close(self) -> None:
        """Release every pooled connection; the Ledger cannot be used after."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- messages -----------------------------------------------------------

    def unarchived(self, account: str, uidls: Sequence[str]) -> list[str]:
        """The ``uidls`` the account has no row for, in input order, without
        duplicates. Pending and failed rows count as known: they are settled
        by :meth:`pending`, never fetched twice. Comparison is byte-exact."""
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return []
        query = select(Message.uidl).where(Message.account == account)
        if len(wanted) <= _IN_LIST_LIMIT:
            query = query.where(Message.uidl.in_(wanted))
        with self._reading() as connection:
            known = set(connection.scalars(query))
        return [uidl for uidl in wanted if uidl not in known]

    def pending(self, account: str) -> list[PendingMessage]:
        """The account's pending messages, oldest first."""
        query = (
            select(Message.uidl, Message.path, Message.size, Message.sha256)
            .where(Message.account == account, Message.state == "pending")
            .order_by(Message.id)
        )
        with self._reading() as connection:
            rows = connection.execute(query).all()
        return [PendingMessage(account, row.uidl, row.path, row.size, row.sha256) for row in rows]

    def record_pending(
        self,
        account: str,
        uidl: str,
        *,
        path: str,
        size: int,
        sha256: str,
        server_size: int | None,
        first_seen_at: datetime,
    ) -> None:
        """Record a message whose file is durable but not yet vouched for.

        Raises :class:`DuplicateMessage` if the account already has a row for
        ``uidl`` (pending, archived or failed); the existing row is kept.
        ``path`` is relative to the archive root; ``size`` and ``server_size``
        are in octets; ``sha256`` is lowercase hex.
        """
        _check_message(path=path, size=size, sha256=sha256, server_size=server_size)
        _require_aware(first_seen_at, "first_seen_at")
        values = {
            "account": account,
            "uidl": uidl,
            "state": "pending",
            "path": path,
            "size": size,
            "sha256": sha256,
            "server_size": server_size,
            "first_seen_at": first_seen_at,
        }
        with self._writing() as connection:
            try:
                connection.execute(insert(Message).values(values))
            except IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise DuplicateMessage(account, uidl) from None
                raise

    def mark_archived(self, account: str, uidl: str, *, archived_at: datetime) -> None:
        """Turn a pending message into an archived one, durably.

        Raises :class:`LedgerError` if the account has no pending row for ``uidl``.
        """
        _require_aware(archived_at, "archived_at")
        statement = (
            update(Message)
            .where(*_pending_row(account, uidl))
            .values(state="archived", archived_at=archived_at)
        )
        with self._writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise LedgerError(f"account {account!r}: no pending message with UIDL {uidl!r}")

    def drop_pending(self, account: str, uidl: str) -> None:
        """Forget a pending message (its file is gone or wrong).

        Dropping a UIDL that has no row is a no-op; dropping an archived or
        failed one raises :class:`LedgerError` and changes nothing.
        """
        with self._writing() as connection:
            deleted = connection.execute(delete(Message).where(*_pending_row(account, uidl)))
            if deleted.rowcount == 0 and _has_row(connection, account, uidl):
                raise LedgerError(
                    f"account {account!r}: UIDL {uidl!r} is not pending; refusing to drop it"
                )

    def archived(self, account: str) -> Iterator[ArchivedMessage]:
        """Stream the account's archived messages in the order they were recorded.

        The rows come in batches; close the iterator (or exhaust it) to
        release its connection.
        """
        self._require_open()
        return self._stream_archived(account)

    def _stream_archived(self, account: str) -> Iterator[ArchivedMessage]:
        query = (
            select(Message.uidl, Message.path, Message.size, Message.sha256, Message.archived_at)
            .where(Message.account == account, Message.state == "archived")
            .order_by(Message.id)
        )
        with self._reading() as connection:
            streaming = connection.execution_options(yield_per=_STREAM_BATCH)
            # Closing the result closes PostgreSQL's server-side cursor, also
            # when the caller stops early and the generator is closed.
            with streaming.execute(query) as result:
                for row in result:
                    yield ArchivedMessage(
                        account, row.uidl, row.path, row.size, row.sha256, row.archived_at
                    )

    # -- runs ---------------------------------------------------------------

    def start_run(self, account: str, *, started_at: datetime) -> int:
        """Record the start of a sync run and return its id."""
        _require_aware(started_at, "started_at")
        statement = insert(Run).values(
            account=account, started_at=started_at, outcome="running", messages=0, bytes=0
        )
        with self._writing() as connection:
            key = connection.execute(statement).inserted_primary_key
        if key is None:  # pragma: no cover - every backend we support returns it
            raise LedgerError(f"account {account!r}: the new run got no id")
        run_id: int = key[0]
        return run_id

    def finish_run(
        self,
        run_id: int,
        *,
        ended_at: datetime,
        outcome: str,
        messages: int,
        bytes: int,
        error: str | None,
    ) -> None:
        """Record how a running run ended: ``outcome`` is "ok" or "failed".

        Raises :class:`LedgerError` if no such run is running.
        """
        _require_aware(ended_at, "ended_at")
        _check_run_end(outcome=outcome, messages=messages, octets=bytes)
        statement = (
            update(Run)
            .where(Run.id == run_id, Run.outcome == "running")
            .values(ended_at=ended_at, outcome=outcome, messages=messages, bytes=bytes, error=error)
        )
        with self._writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise LedgerError(f"run {run_id} does not exist or has already finished")

    # -- reports ------------------------------------------------------------

    def status(self) -> list[AccountStatus]:
        """One entry per account that has messages or runs, sorted by name."""
        with self._reading() as connection:
            totals = {row.account: row for row in connection.execute(_totals_query())}
            last = {row.account: row for row in connection.execute(_last_run_query())}
            success = dict(connection.execute(_last_success_query()).all())
        return [
            _account_status(name, totals.get(name), last.get(name), success.get(name))
            for name in sorted(totals.keys() | last.keys())
        ]

    def accounts(self) -> list[str]:
        """Every account that has messages or runs, sorted."""
        query = union(select(Message.account), select(Run.account))
        with self._reading() as connection:
            return sorted(connection.scalars(query))

    # -- plumbing -----------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the ledger {self.url} is closed")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        self._require_open()
        with translate_errors(self._engine.url), self._engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One transaction, committed (durably) when the block ends cleanly."""
        self._require_open()
        with translate_errors(self._engine.url), self._engine.connect() as connection:
            connection.execution_options(**{WRITE_INTENT: True})
            with connection.begin():
                yield connection


def _pending_row(account: str, uidl: str) -> tuple[ColumnElement[bool], ...]:
    return (Message.account == account, Message.uidl == uidl, Message.state == "pending")


def _has_row(connection: Connection, account: str, uidl: str) -> bool:
    query = select(Message.id).where(Message.account == account, Message.uidl == uidl)
    return connection.scalar(query) is not None


def _is_unique_violation(exc: IntegrityError) -> bool:
    # PostgreSQL: SQLSTATE 23505 unique_violation; SQLite: its message text.
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")


def _check_message(*, path: str, size: int, sha256: str, server_size: int | None) -> None:
    if not path:
        raise ValueError("path must not be empty")
    if size < 0 or (server_size is not None and server_size < 0):
        raise ValueError(f"sizes must not be negative (size={size}, server_size={server_size})")
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")


def _check_run_end(*, outcome: str, messages: int, octets: int) -> None:
    if outcome not in _FINAL_OUTCOMES:
        raise ValueError(f"outcome must be 'ok' or 'failed', got {outcome!r}")
    if messages < 0 or octets < 0:
        raise ValueError(f"counts must not be negative (messages={messages}, bytes={octets})")


def _totals_query() -> Select[str, int, int]:
    """Per account: how many messages are archived, and their octets."""
    archived = Message.state == "archived"
    return select(
        Message.account,
        func.coalesce(func.sum(case((archived, 1), else_=0)), 0).label("archived"),
        func.coalesce(func.sum(case((archived, Message.size), else_=0)), 0).label("octets"),
    ).group_by(Message.account)


def _last_run_query() -> Select[str, datetime, str, str | None]:
    """Per account: the latest run (the highest id: clocks may step back)."""
    latest = select(func.max(Run.id)).group_by(Run.account).scalar_subquery()
    return select(Run.account, Run.started_at, Run.outcome, Run.error).where(Run.id.in_(latest))


def _last_success_query() -> Select[str, datetime | None]:
    """Per account: when the latest successful run ended."""
    return (
        select(Run.account, func.max(Run.ended_at)).where(Run.outcome == "ok").group_by(Run.account)
    )


def _account_status(
    name: str,
    totals: Row[str, int, int] | None,
    last: Row[str, datetime, str, str | None] | None,
    success_at: datetime | None,
) -> AccountStatus:
    return AccountStatus(
        name=name,
        archived_messages=int(totals.archived) if totals else 0,
        archived_bytes=int(totals.octets) if totals else 0,
        last_run_at=last.started_at if last else None,
        last_outcome=last.outcome if last else None,
        last_error=last.error if last else None,
        last_success_at=success_at,
    )
