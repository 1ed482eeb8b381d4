"""The messages of an account: what to fetch, pending rows, archived rows.

A message's row is first pending (its file is durable but not yet vouched
for), then archived; :class:`MessagesMixin` is the part of the Ledger that
moves it along.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Select,
    delete,
    insert,
    select,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from popvault.errors import LedgerError
from popvault.ledger.core import IN_LIST_LIMIT, LedgerCore, require_aware
from popvault.ledger.models import Failure, Message
from popvault.ledger.records import ArchivedMessage, DuplicateMessage, PendingMessage

# Rows fetched per round trip when streaming archived messages.
_STREAM_BATCH = 1000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class MessagesMixin(LedgerCore):
    """The Ledger's message rows: the diff against the server, pending, archived."""

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
        require_aware(first_seen_at, "first_seen_at")
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
        require_aware(archived_at, "archived_at")
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


def _pending_row(account: str, uidl: str) -> tuple[ColumnElement[bool], ...]:
    return (Message.account == account, Message.uidl == uidl, Message.state == "pending")


def _has_row(connection: Connection, account: str, uidl: str) -> bool:
    query = select(Message.id).where(Message.account == account, Message.uidl == uidl)
    return connection.scalar(query) is not None


def _is_unique_violation(exc: IntegrityError) -> bool:
    # PostgreSQL: SQLSTATE 23505 unique_violation; SQLite: its message text.
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _check_message(*, path: str, size: int, sha256: str, server_size: int | None) -> None:
    if not path:
        raise ValueError("path must not be empty")
    if size < 0 or (server_size is not None and server_size < 0):
        raise ValueError(f"sizes must not be negative (size={size}, server_size={server_size})")
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")


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
    if len(wanted) <= IN_LIST_LIMIT:
        queries = [query.where(query.selected_columns[0].in_(wanted)) for query in queries]
    return queries[0] if len(queries) == 1 else union(*queries)
