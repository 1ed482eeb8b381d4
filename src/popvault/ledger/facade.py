"""The ledger facade: what the rest of popvault knows about the database.

Callers get plain frozen dataclasses and popvault errors; no SQLAlchemy type
crosses this boundary. Every write commits before its method returns, and the
commit is durable (SQLite ``synchronous=FULL``; PostgreSQL
``synchronous_commit=on``): the orchestrator may delete the server's copy of a
message as soon as :meth:`Ledger.mark_archived` returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    CompoundSelect,
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, aliased

from popvault.errors import LedgerError
from popvault.ledger import schedules as _schedules
from popvault.ledger.engine import (
    WRITE_INTENT,
    create_ledger_engine,
    parse_url,
    redact,
    sqlite_file,
    translate_errors,
)
from popvault.ledger.locks import (
    LocalLocks,
    LockHeld,
    advisory_key,
    advisory_lock,
    daemon_lock_path,
    file_lock,
    lock_file_path,
)
from popvault.ledger.migrate import check_engine, upgrade_engine
from popvault.ledger.models import Failure, Message, Run, UTCDateTime
from popvault.ledger.schedules import ScheduleEntry

# Up to this many UIDLs are looked up with one `uidl IN (...)`; past it, one
# query reads every UIDL of the account and the difference is taken in
# Python. 500 stays far below SQLite's bound-parameter limit (999 before
# SQLite 3.32) and keeps the IN list cheap to plan on PostgreSQL.
_IN_LIST_LIMIT = 500

# Rows fetched per round trip when streaming archived messages.
_STREAM_BATCH = 1000

# A failure's error text is kept to this many characters: enough for a
# server's -ERR line or an OS error, not for a megabyte of traceback.
_MAX_ERROR_CHARS = 2000

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


class AccountBusy(LedgerError):
    """Another popvault process holds the account's lock (:meth:`Ledger.account_lock`).

    ``pid`` is that process's id when it could be found out, else None.
    """

    def __init__(self, account: str, pid: int | None) -> None:
        self.account = account
        self.pid = pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"account {account!r} is being archived by another popvault process{holder}; "
            "try again later"
        )


class DaemonRunning(LedgerError):
    """Another ``popvault daemon`` holds this ledger (:meth:`Ledger.daemon_lock`).

    ``pid`` is that process's id when it could be found out, else None.
    """

    def __init__(self, ledger: str, pid: int | None) -> None:
        self.pid = pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"another popvault daemon is already running on the ledger {ledger}{holder}; "
            "only one daemon may use a SQLite ledger"
        )


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
class RetainedMessage:
    """An archived message that, as far as the ledger knows, is still on the server."""

    uidl: str
    path: str
    size: int
    archived_at: datetime
    server_size: int | None = None


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`Ledger.reconcile` settled: messages popvault ``deleted``
    (QUIT's reply was lost), messages another client took (``gone``),
    delete requests ``cleared`` because the session never reached QUIT, and
    messages marked gone that the server lists again (``returned``)."""

    deleted: int
    gone: int
    cleared: int
    returned: int = 0


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    """The account's retained messages against a retention cutoff.

    ``due`` counts those archived at or before the cutoff;
    ``next_due_archived_at`` is the earliest archive time after it.
    """

    retained: int
    due: int
    next_due_archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """A message that failed to archive ``attempts`` times, the last with ``last_error``."""

    uidl: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_error: str


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What ``popvault status`` shows for one account.

    ``last_run_at`` is when the latest run started; ``last_outcome`` and
    ``last_error`` are that run's ("running" while it goes on);
    ``last_success_at`` is when the latest successful run ended;
    ``on_server`` is the message count of the latest run that listed the
    server; ``failed_messages`` counts messages with recorded failures.
    """

    name: str
    archived_messages: int
    archived_bytes: int
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    last_success_at: datetime | None
    on_server: int | None
    failed_messages: int


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
        self._local_locks = LocalLocks()
        self._daemon_locks = LocalLocks()

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

    def unarchived(
        self,
        account: str,
        uidls: Sequence[str],
        *,
        max_attempts: int | None = None,
        retry_failed: bool = False,
    ) -> list[str]:
        """The ``uidls`` to fetch, in input order, without duplicates.

        Left out: UIDLs the account has a messages row for (pending ones are
        settled by :meth:`pending`, never fetched twice) and, unless
        ``retry_failed``, those that failed ``max_attempts`` times or more
        (set aside; ``None`` never sets one aside). Comparison is byte-exact.
        """
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return []
        set_aside_at = None if retry_failed else max_attempts
        query = _known_uidls_query(account, wanted, set_aside_at)
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
        ``uidl`` (pending or archived); the existing row is kept.
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

        Dropping a UIDL that has no row is a no-op; dropping an archived one
        raises :class:`LedgerError` and changes nothing.
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

    # -- retention ----------------------------------------------------------

    def retained(self, account: str, uidls: Sequence[str]) -> list[RetainedMessage]:
        """The archived messages among ``uidls`` still on the server as far as
        the ledger knows (neither deleted nor gone), in input order, once each."""
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return []
        query = select(
            Message.uidl, Message.path, Message.size, Message.archived_at, Message.server_size
        ).where(*_retained_rows(account))
        if len(wanted) <= _IN_LIST_LIMIT:
            query = query.where(Message.uidl.in_(wanted))
        with self._reading() as connection:
            found = {row.uidl: _retained_message(row) for row in connection.execute(query)}
        return [found[uidl] for uidl in wanted if uidl in found]

    def mark_delete_requested(self, account: str, uidls: Sequence[str], *, at: datetime) -> None:
        """Note that the server accepted DELE for ``uidls`` at ``at``, before QUIT.

        Until :meth:`mark_deleted`, the deletion is uncertain: RFC 1939
        section 6 deletes only once QUIT is answered, and that answer may be
        lost. :meth:`reconcile` settles it in the next session.
        """
        _require_aware(at, "at")
        self._update_retained(account, uidls, delete_requested_at=at)

    def mark_deleted(self, account: str, uidls: Sequence[str], *, at: datetime) -> None:
        """Record that QUIT answered +OK, so the server deleted ``uidls`` at ``at``."""
        _require_aware(at, "at")
        self._update_retained(account, uidls, deleted_at=at, delete_requested_at=None)

    def reconcile(
        self, account: str, uidls_on_server: Sequence[str], *, now: datetime
    ) -> Reconciled:
        """Settle the account's retained messages against the server's full UIDL list.

        Call it first in every session. A retained message missing from the
        server was deleted by popvault if a DELE was requested (its
        ``deleted_at`` becomes the request time), else taken by another client
        (``gone_at = now``). A request for a message still there is cleared:
        that session never reached QUIT. A message marked gone that the server
        lists again (a server that hid it for a while, or a listing that came
        back short) is live again, so retention applies to it once more.
        Failure records of messages no longer on the server are dropped. A few
        reads plus a few set-wise writes.
        """
        _require_aware(now, "now")
        on_server = frozenset(uidls_on_server)
        live = select(Message.id, Message.uidl, Message.delete_requested_at).where(
            *_retained_rows(account)
        )
        with self._writing() as connection:
            plan = _ReconcilePlan.of(connection.execute(live), on_server)
            settled = plan.apply(connection, now)
            returned = _revive_returned(connection, account, on_server)
            _drop_stale_failures(connection, account, on_server)
        return replace(settled, returned=returned)

    def retention_summary(self, account: str, *, cutoff: datetime | None) -> RetentionSummary:
        """Count the account's retained messages and those due at ``cutoff``.

        Due: archived at or before ``cutoff`` (none when it is None). The
        caller passes ``now - duration`` (or ``now`` for delete-at-once) and
        adds the duration back to ``next_due_archived_at``.
        """
        live = _retained_rows(account)
        if cutoff is None:
            with self._reading() as connection:
                count = connection.scalar(select(func.count()).where(*live))
            return RetentionSummary(int(count or 0), 0, None)
        _require_aware(cutoff, "cutoff")
        with self._reading() as connection:
            row = connection.execute(_summary_query(cutoff).where(*live)).one()
        return RetentionSummary(int(row.retained), int(row.due or 0), row.next_due)

    def _update_retained(
        self, account: str, uidls: Sequence[str], **values: datetime | None
    ) -> None:
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return
        with self._writing() as connection:
            member = _among(Message.uidl, wanted, connection)
            statement = update(Message).where(*_retained_rows(account), member).values(values)
            connection.execute(statement)

    # -- failures -----------------------------------------------------------

    def record_failure(self, account: str, uidl: str, *, error: str, at: datetime) -> int:
        """Count one more failed attempt to archive ``uidl``; return the attempts so far.

        ``error`` (what went wrong, never a password) is kept, clipped to
        2000 characters, as the latest error.
        """
        _require_aware(at, "at")
        values = {
            "account": account,
            "uidl": uidl,
            "attempts": 1,
            "first_failed_at": at,
            "last_failed_at": at,
            "last_error": error[:_MAX_ERROR_CHARS],
        }
        with self._writing() as connection:
            attempts = connection.execute(_failure_upsert(connection, values)).scalar_one()
        return int(attempts)

    def clear_failure(self, account: str, uidl: str) -> None:
        """Forget the failures of ``uidl`` (it archived at last); no-op if none."""
        statement = delete(Failure).where(Failure.account == account, Failure.uidl == uidl)
        with self._writing() as connection:
            connection.execute(statement)

    def failures(self, account: str) -> list[FailedMessage]:
        """The account's failed messages, the earliest failure first."""
        query = (
            select(
                Failure.uidl,
                Failure.attempts,
                Failure.first_failed_at,
                Failure.last_failed_at,
                Failure.last_error,
            )
            .where(Failure.account == account)
            .order_by(Failure.first_failed_at, Failure.id)
        )
        with self._reading() as connection:
            return [FailedMessage(*row) for row in connection.execute(query)]

    # -- locking ------------------------------------------------------------

    @contextmanager
    def account_lock(self, account: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the account's lock for the block: one session per account at once.

        Raises :class:`AccountBusy` if another holder keeps it for ``wait``
        seconds. SQLite: a flock on ``<db file>.lock.d/<account>.lock``;
        in-memory SQLite: a lock of this Ledger; PostgreSQL: an advisory lock
        on a connection of its own. A holder that dies (even by SIGKILL)
        releases it. Not re-entrant: a nested call for the same account waits.
        """
        self._require_open()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock_for(account, wait))
            except LockHeld as held:
                raise AccountBusy(account, held.pid) from None
            yield

    def _lock_for(self, account: str, wait: float) -> AbstractContextManager[None]:
        if self._engine.dialect.name == "postgresql":
            return advisory_lock(self._engine, advisory_key(account), wait=wait)
        database = sqlite_file(self._engine.url)
        if database is None:
            return self._local_locks.hold(account, wait=wait)
        return file_lock(lock_file_path(database, account), wait=wait)

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
        on_server: int | None = None,
    ) -> None:
        """Record how a running run ended: ``outcome`` is "ok" or "failed".

        ``on_server`` is how many UIDLs the server listed (None if the run
        never got that far). Raises :class:`LedgerError` if no such run is running.
        """
        _require_aware(ended_at, "ended_at")
        _check_run_end(outcome=outcome, messages=messages, octets=bytes, on_server=on_server)
        values = {
            "ended_at": ended_at,
            "outcome": outcome,
            "messages": messages,
            "bytes": bytes,
            "error": error,
            "on_server": on_server,
        }
        statement = update(Run).where(Run.id == run_id, Run.outcome == "running").values(values)
        with self._writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise LedgerError(f"run {run_id} does not exist or has already finished")

    # -- reports ------------------------------------------------------------

    def status(self) -> list[AccountStatus]:
        """One entry per account that has messages, failures or runs, sorted by name."""
        with self._reading() as connection:
            totals = {row.account: row for row in connection.execute(_totals_query())}
            last = {row.account: row for row in connection.execute(_last_run_query())}
        return [
            _account_status(name, totals.get(name), last.get(name))
            for name in sorted(totals.keys() | last.keys())
        ]

    def accounts(self) -> list[str]:
        """Every account that has messages or runs, sorted."""
        query = union(select(Message.account), select(Run.account))
        with self._reading() as connection:
            return sorted(connection.scalars(query))

    def archived_totals(self, account: str) -> tuple[int, int]:
        """The account's archived messages and their stored octets (what status shows)."""
        query = select(func.count(), func.coalesce(func.sum(Message.size), 0)).where(
            Message.account == account, Message.state == "archived"
        )
        with self._reading() as connection:
            messages, octets = connection.execute(query).one()
        return int(messages), int(octets)

    # -- the daemon ---------------------------------------------------------

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Hold the ledger's daemon lock for the block: one ``popvault daemon`` per ledger.

        Raises :class:`DaemonRunning` at once if another holder has it. SQLite:
        a flock on ``<db file>.lock.d/@daemon.lock``; in-memory SQLite: a lock
        of this Ledger; PostgreSQL: no lock at all (several daemons may share
        it; the per-account locks keep their sessions apart).
        """
        self._require_open()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._daemon_lock_for())
            except LockHeld as held:
                raise DaemonRunning(self.url, held.pid) from None
            yield

    def _daemon_lock_for(self) -> AbstractContextManager[None]:
        if self._engine.dialect.name == "postgresql":
            return nullcontext()
        database = sqlite_file(self._engine.url)
        if database is None:
            return self._daemon_locks.hold("daemon", wait=0.0)
        return file_lock(daemon_lock_path(database), wait=0.0)

    def save_schedule(self, entry: ScheduleEntry) -> None:
        """Record (or replace) an account's next run as planned by a daemon."""
        _require_aware(entry.updated_at, "updated_at")
        with self._writing() as connection:
            _schedules.upsert(connection, entry)

    def schedules(self) -> list[ScheduleEntry]:
        """Every account's recorded plan, live or stale, by account name."""
        with self._reading() as connection:
            return _schedules.select_all(connection)

    def touch_schedules(self, *, pid: int, host: str, at: datetime) -> None:
        """Mark one daemon's rows as fresh: it is still running."""
        _require_aware(at, "at")
        with self._writing() as connection:
            _schedules.touch(connection, pid=pid, host=host, at=at)

    def drop_schedules(self, *, pid: int, host: str, accounts: Sequence[str] | None = None) -> None:
        """Forget one daemon's plans for ``accounts`` (None: all of them)."""
        with self._writing() as connection:
            _schedules.remove(connection, pid=pid, host=host, accounts=accounts)

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


def _check_run_end(*, outcome: str, messages: int, octets: int, on_server: int | None) -> None:
    if outcome not in _FINAL_OUTCOMES:
        raise ValueError(f"outcome must be 'ok' or 'failed', got {outcome!r}")
    if messages < 0 or octets < 0 or (on_server is not None and on_server < 0):
        raise ValueError(
            f"counts must not be negative (messages={messages}, bytes={octets}, "
            f"on_server={on_server})"
        )


def _known_uidls_query(
    account: str, wanted: list[str], set_aside_at: int | None
) -> Select[str] | CompoundSelect[str]:
    """UIDLs not to fetch: every messages row, and failures set aside."""
    queries = [select(Message.uidl).where(Message.account == account)]
    if set_aside_at is not None:
        failed = select(Failure.uidl).where(
            Failure.account == account, Failure.attempts >= set_aside_at
        )
        queries.append(failed)
    if len(wanted) <= _IN_LIST_LIMIT:
        queries = [query.where(query.selected_columns[0].in_(wanted)) for query in queries]
    return queries[0] if len(queries) == 1 else union(*queries)


def _retained_rows(account: str) -> tuple[ColumnElement[bool], ...]:
    """Archived rows of the account the server still has, as far as we know."""
    return (
        Message.account == account,
        Message.state == "archived",
        Message.deleted_at.is_(None),
        Message.gone_at.is_(None),
    )


def _retained_message(
    row: Row[str, str, int, datetime | None, int | None],
) -> RetainedMessage:
    if row.archived_at is None:  # pragma: no cover - ck_messages_archived_at forbids it
        raise LedgerError(f"archived UIDL {row.uidl!r} has no archive time")
    return RetainedMessage(row.uidl, row.path, row.size, row.archived_at, row.server_size)


def _among(
    column: InstrumentedAttribute[Any], values: Sequence[Any], connection: Connection
) -> ColumnElement[bool]:
    """``column IN values`` as one statement with a bounded number of parameters.

    Small lists are a plain IN. Past _IN_LIST_LIMIT the whole list travels
    as one parameter (a PostgreSQL array; a JSON array read by SQLite's
    json_each), so a 100k-message mailbox costs one statement, not one per
    chunk, and stays far below the drivers' parameter limits (PostgreSQL's
    protocol allows 65535).
    """
    if len(values) <= _IN_LIST_LIMIT:
        return column.in_(values)
    if connection.dialect.name == "postgresql":
        array = bindparam(None, list(values), type_=ARRAY(column.type))
        return column == any_(array)
    members = func.json_each(json.dumps(list(values))).table_valued("value")
    return column.in_(select(members.c.value))


@dataclass(slots=True)
class _ReconcilePlan:
    """Row ids of retained messages, sorted by what :meth:`Ledger.reconcile` does."""

    deleted: list[int]
    gone: list[int]
    cleared: list[int]

    @classmethod
    def of(
        cls, rows: Iterable[Row[int, str, datetime | None]], on_server: frozenset[str]
    ) -> _ReconcilePlan:
        plan = cls([], [], [])
        for row in rows:
            requested = row.delete_requested_at is not None
            if row.uidl in on_server:
                if requested:
                    plan.cleared.append(row.id)
            elif requested:
                plan.deleted.append(row.id)
            else:
                plan.gone.append(row.id)
        return plan

    def apply(self, connection: Connection, now: datetime) -> Reconciled:
        """One UPDATE per non-empty group; returns how many rows each changed."""
        deleted = _update_ids(
            connection,
            self.deleted,
            deleted_at=Message.delete_requested_at,
            delete_requested_at=None,
        )
        gone = _update_ids(connection, self.gone, gone_at=now)
        cleared = _update_ids(connection, self.cleared, delete_requested_at=None)
        return Reconciled(deleted=deleted, gone=gone, cleared=cleared)


def _update_ids(connection: Connection, ids: list[int], **values: Any) -> int:
    if not ids:
        return 0
    # The live conditions again: a row settled meanwhile is not settled twice.
    statement = (
        update(Message)
        .where(_among(Message.id, ids, connection))
        .where(Message.deleted_at.is_(None), Message.gone_at.is_(None))
        .values(values)
    )
    return connection.execute(statement).rowcount


def _revive_returned(connection: Connection, account: str, on_server: frozenset[str]) -> int:
    """Clear gone_at of archived rows the server lists again; returns how many."""
    gone = select(Message.id, Message.uidl).where(
        Message.account == account,
        Message.state == "archived",
        Message.deleted_at.is_(None),
        Message.gone_at.is_not(None),
    )
    back = [row.id for row in connection.execute(gone) if row.uidl in on_server]
    if not back:
        return 0
    statement = update(Message).where(_among(Message.id, back, connection)).values(gone_at=None)
    return connection.execute(statement).rowcount


def _drop_stale_failures(connection: Connection, account: str, on_server: frozenset[str]) -> None:
    """A failure record of a message the server no longer has can never clear."""
    failed = select(Failure.id, Failure.uidl).where(Failure.account == account)
    stale = [row.id for row in connection.execute(failed) if row.uidl not in on_server]
    if stale:
        connection.execute(delete(Failure).where(_among(Failure.id, stale, connection)))


def _summary_query(cutoff: datetime) -> Select[int, int | None, datetime | None]:
    due = case((Message.archived_at <= cutoff, 1), else_=0)
    later = case((Message.archived_at > cutoff, Message.archived_at))
    return select(
        func.count().label("retained"),
        func.sum(due).label("due"),
        func.min(later, type_=UTCDateTime()).label("next_due"),
    )


def _failure_upsert(connection: Connection, values: dict[str, Any]) -> Insert:
    """INSERT, or on (account, uidl) add one attempt and keep the latest error."""
    if connection.dialect.name == "postgresql":
        statement: Any = postgresql.insert(Failure).values(values)
    else:
        statement = sqlite.insert(Failure).values(values)
    updated = {
        "attempts": Failure.attempts + 1,
        "last_failed_at": statement.excluded.last_failed_at,
        "last_error": statement.excluded.last_error,
    }
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=[Failure.account, Failure.uidl], set_=updated
    )
    return upsert.returning(Failure.attempts)


def _totals_query() -> Select[str, int, int, int]:
    """Per account: archived messages, their octets, and failed messages."""
    archived = Message.state == "archived"
    per_message = select(
        Message.account.label("account"),
        case((archived, 1), else_=0).label("archived"),
        case((archived, Message.size), else_=0).label("octets"),
        literal(0).label("failed"),
    )
    per_failure = select(Failure.account, literal(0), literal(0), literal(1))
    rows = union_all(per_message, per_failure).subquery()
    return select(
        rows.c.account,
        func.sum(rows.c.archived).label("archived"),
        func.sum(rows.c.octets).label("octets"),
        func.sum(rows.c.failed).label("failed"),
    ).group_by(rows.c.account)


def _last_run_query() -> Select[str, datetime, str, str | None, datetime | None, int | None]:
    """Per account: the latest run (the highest id: clocks may step back), when
    the latest successful one ended, and the latest server message count."""
    latest = select(func.max(Run.id)).group_by(Run.account).scalar_subquery()
    other = aliased(Run)
    success_at = (
        select(func.max(other.ended_at))
        .where(other.account == Run.account, other.outcome == "ok")
        .scalar_subquery()
    )
    on_server = (
        select(other.on_server)
        .where(other.account == Run.account, other.on_server.is_not(None))
        .order_by(other.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return select(
        Run.account,
        Run.started_at,
        Run.outcome,
        Run.error,
        success_at.label("success_at"),
        on_server.label("on_server"),
    ).where(Run.id.in_(latest))


def _account_status(
    name: str,
    totals: Row[str, int, int, int] | None,
    last: Row[str, datetime, str, str | None, datetime | None, int | None] | None,
) -> AccountStatus:
    return AccountStatus(
        name=name,
        archived_messages=int(totals.archived) if totals else 0,
        archived_bytes=int(totals.octets) if totals else 0,
        last_run_at=last.started_at if last else None,
        last_outcome=last.outcome if last else None,
        last_error=last.error if last else None,
        last_success_at=last.success_at if last else None,
        on_server=last.on_server if last else None,
        failed_messages=int(totals.failed) if totals else 0,
    )
