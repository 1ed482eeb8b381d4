"""The messages of an account: what to fetch, pending rows, archived rows.

A message's row is first pending (its file is durable but not yet vouched
for), then archived; :class:`MessagesMixin` is the part of the Ledger that
moves it along. Messages are named by :class:`~popvault.ledger.records.MessageKey`
(uidl, occurrence); a plain UIDL string means occurrence 1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Row,
    Select,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from popvault.errors import LedgerError
from popvault.gcpause import cyclic_gc_paused
from popvault.ledger.core import (
    IN_LIST_LIMIT,
    LedgerCore,
    Pair,
    among,
    decoded_columns,
    pair_of,
    require_aware,
    require_reason,
    uidls_of,
    undecoded,
    upsert_insert,
)
from popvault.ledger.models import AccountTotals, Failure, Message
from popvault.ledger.records import (
    ArchivedMessage,
    DuplicateMessage,
    KeyLike,
    KnownRow,
    MessageKey,
    NewMessage,
    PendingMessage,
    as_key,
)

# Rows fetched per round trip when streaming archived messages.
_STREAM_BATCH = 1000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# unarchived() gives back what it was given: plain UIDLs for plain UIDLs,
# MessageKeys for MessageKeys.
K = TypeVar("K", bound=KeyLike)


class MessagesMixin(LedgerCore):
    """The Ledger's message rows: the diff against the server, pending, archived."""

    def unarchived(
        self,
        account: str,
        keys: Sequence[K],
        *,
        max_attempts: int | None = None,
        retry_failed: bool = False,
    ) -> list[K]:
        """The ``keys`` to fetch, in input order, without duplicates.

        Each key is a UIDL (occurrence 1) or a :class:`MessageKey`; what comes
        back is the same elements as given. Left out: keys the account has a
        messages row for (pending ones are settled by :meth:`pending`, never
        fetched twice) and, unless ``retry_failed``, those that failed
        ``max_attempts`` times or more (set aside; ``None`` never sets one
        aside). Comparison is byte-exact.
        """
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        wanted: dict[Pair, K] = {}
        for key in keys:
            wanted.setdefault(pair_of(key), key)
        if not wanted:
            return []
        set_aside_at = None if retry_failed else max_attempts
        query = _known_keys_query(account, uidls_of(wanted), set_aside_at)
        with self._reading() as connection:
            known = {(uidl, occurrence) for uidl, occurrence in connection.execute(query).all()}
        return [original for pair, original in wanted.items() if pair not in known]

    def pending(self, account: str) -> list[PendingMessage]:
        """The account's pending messages, oldest first."""
        with self._reading() as connection:
            rows = connection.execute(_PENDING_QUERY, {"account": account}).all()
        return [PendingMessage(account, *row) for row in rows]

    def record_pending(
        self,
        account: str,
        key: KeyLike,
        *,
        path: str,
        size: int,
        sha256: str,
        server_size: int | None,
        first_seen_at: datetime,
        received_size: int | None = None,
        hold_reason: str | None = None,
        held_at: datetime | None = None,
    ) -> None:
        """Record a message whose file is durable but not yet vouched for.

        Raises :class:`DuplicateMessage` if the account already has a row for
        ``key`` (pending or archived); the existing row is kept.
        ``path`` is relative to the archive root; ``size`` (stored),
        ``server_size`` (what LIST announced) and ``received_size`` (what
        arrived, line ends counted as CRLF) are in octets; ``sha256`` is
        lowercase hex. A ``hold_reason`` holds the server copy from the start
        (see :meth:`hold`) and then needs an aware ``held_at``.
        """
        message = NewMessage(
            as_key(key),
            path=path,
            size=size,
            sha256=sha256,
            server_size=server_size,
            first_seen_at=first_seen_at,
            received_size=received_size,
            hold_reason=hold_reason,
            held_at=held_at,
        )
        self.record_pending_many(account, [message])

    def record_pending_many(self, account: str, messages: Sequence[NewMessage]) -> None:
        """:meth:`record_pending` for a batch, in one transaction (group commit).

        All or nothing: if the account already has a row for any of the keys,
        :class:`DuplicateMessage` names one of them and nothing is recorded.
        """
        rows = [_pending_values(account, message) for message in messages]
        if not rows:
            return
        with self._writing() as connection:
            try:
                connection.execute(insert(Message), rows)
            except IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise self._duplicate(account, messages) from None
                raise
            # Every account with messages has its totals row (status lists it).
            connection.execute(_totals_added(connection, account, 0, 0, only_make=True))

    def _duplicate(self, account: str, messages: Sequence[NewMessage]) -> DuplicateMessage:
        """The :class:`DuplicateMessage` for the first of ``messages`` that has a row."""
        with self._reading() as connection:
            for message in messages:
                pair = pair_of(message.key)
                if _has_row(connection, account, pair):
                    return DuplicateMessage(account, *pair)
        key = messages[0].key  # a key repeated within the batch itself
        return DuplicateMessage(account, key.uidl, key.occurrence)

    def mark_archived(self, account: str, key: KeyLike, *, archived_at: datetime) -> None:
        """Turn a pending message into an archived one, durably.

        Raises :class:`LedgerError` if the account has no pending row for ``key``.
        """
        self.mark_archived_many(account, [key], archived_at=archived_at)

    def mark_archived_many(
        self, account: str, keys: Sequence[KeyLike], *, archived_at: datetime
    ) -> None:
        """:meth:`mark_archived` for a batch, in one transaction (group commit).

        All or nothing: if any key has no pending row, :class:`LedgerError`
        names one and nothing changes.
        """
        require_aware(archived_at, "archived_at")
        pairs = list(dict.fromkeys(pair_of(key) for key in keys))
        if not pairs:
            return
        try:
            with self._writing() as connection:
                sizes: list[int] = []
                for start in range(0, len(pairs), IN_LIST_LIMIT):
                    chunk = pairs[start : start + IN_LIST_LIMIT]
                    statement = (
                        update(Message)
                        .where(
                            Message.account == account,
                            Message.state == "pending",
                            tuple_(Message.uidl, Message.occurrence).in_(chunk),
                        )
                        .values(state="archived", archived_at=archived_at)
                        .returning(Message.size)
                    )
                    archived = connection.execute(statement).scalars().all()
                    if len(archived) != len(chunk):
                        raise _NotAllPending(chunk)  # leaving the block rolls it all back
                    sizes += archived
                # In the same transaction: the totals move with the rows or not at all.
                connection.execute(_totals_added(connection, account, len(sizes), sum(sizes)))
        except _NotAllPending as short:
            # Which one, asked after the rollback (the UPDATE changed the others).
            with self._reading() as connection:
                missing = next(
                    pair for pair in short.pairs if not _is_pending(connection, account, pair)
                )
            raise LedgerError(
                f"account {account!r}: no pending message with {_describe(missing)}"
            ) from None

    def drop_pending(self, account: str, key: KeyLike) -> None:
        """Forget a pending message (its file is gone or wrong).

        Dropping a key that has no row is a no-op; dropping an archived one
        raises :class:`LedgerError` and changes nothing.
        """
        pair = pair_of(key)
        with self._writing() as connection:
            deleted = connection.execute(delete(Message).where(*_pending_row(account, pair)))
            if deleted.rowcount == 0 and _has_row(connection, account, pair):
                raise LedgerError(
                    f"account {account!r}: {_describe(pair)} is not pending; refusing to drop it"
                )

    def known_rows(self, account: str, uidls: Sequence[str]) -> dict[str, list[KnownRow]]:
        """Every row of the account whose UIDL is in ``uidls``, and every row of
        each UIDL that has more than one occurrence, grouped by UIDL.

        Rows of every state come back: pending or archived, deleted, gone or
        not. The shared UIDLs come even when not asked for, so that a caller
        sees every occurrence of a UIDL the server now lists once (or not at
        all). Each list is ordered by occurrence; the asked-for UIDLs come
        first, in input order, then the other shared ones in UIDL order. One
        statement, which stays cheap when no UIDL is shared.
        """
        wanted = list(dict.fromkeys(uidls))
        with self._reading() as connection:
            query = _known_rows_query(account, wanted, connection)
            with cyclic_gc_paused():
                rows = connection.execute(query).all()
        with cyclic_gc_paused():
            columns = decoded_columns(rows, _KNOWN_COLUMNS, connection.dialect)
            found = _grouped_by_uidl(list(map(_make_known_row, zip(*columns, strict=True))))
            ordered = {uidl: found.pop(uidl) for uidl in wanted if uidl in found}
            ordered.update(found)
        return ordered

    def next_occurrence(self, account: str, uidl: str) -> int:
        """The occurrence a new message under ``uidl`` gets: the highest recorded plus 1.

        1 when the account has no row for ``uidl``. Failure records reserve
        no occurrence: a message that failed keeps the key it failed under.
        """
        query = select(func.max(Message.occurrence)).where(
            Message.account == account, Message.uidl == uidl
        )
        with self._reading() as connection:
            highest = connection.scalar(query)
        return int(highest or 0) + 1

    def set_server_size(self, account: str, key: KeyLike, server_size: int) -> None:
        """Record the size the server's LIST gives for the message ``key``.

        For after a content check proved the server's message is the one
        archived (its LIST size had differed). Raises :class:`LedgerError`
        if the account has no row for ``key``.
        """
        if server_size < 0:
            raise ValueError(f"server_size must not be negative, got {server_size}")
        pair = pair_of(key)
        statement = update(Message).where(*_key_row(account, pair)).values(server_size=server_size)
        with self._writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise LedgerError(f"account {account!r}: no message with {_describe(pair)}")

    def archived(self, account: str) -> Iterator[ArchivedMessage]:
        """Stream the account's archived messages in the order they were recorded.

        The rows come in batches; close the iterator (or exhaust it) to
        release its connection.
        """
        self._require_open()
        return self._stream_archived(account)

    def _stream_archived(self, account: str) -> Iterator[ArchivedMessage]:
        query = (
            select(
                Message.uidl,
                Message.path,
                Message.size,
                Message.sha256,
                Message.archived_at,
                Message.occurrence,
            )
            .where(Message.account == account, Message.state == "archived")
            .order_by(Message.id)
        )
        with self._reading() as connection:
            streaming = connection.execution_options(yield_per=_STREAM_BATCH)
            # Closing the result closes PostgreSQL's server-side cursor, also
            # when the caller stops early and the generator is closed.
            with streaming.execute(query) as result:
                for row in result:
                    yield _archived_message(account, row)


# Built once: every run asks (settle_pending), and building a statement costs
# about as much CPU as running it on SQLite (the daemon's idle tick).
_PENDING_QUERY = (
    select(Message.uidl, Message.path, Message.size, Message.sha256, Message.occurrence)
    .where(Message.account == bindparam("account"), Message.state == "pending")
    .order_by(Message.id)
)


def _archived_message(
    account: str, row: Row[str, str, int, str, datetime | None, int]
) -> ArchivedMessage:
    if row.archived_at is None:  # pragma: no cover - ck_messages_archived_at forbids it
        raise LedgerError(f"archived UIDL {row.uidl!r} has no archive time")
    return ArchivedMessage(
        account, row.uidl, row.path, row.size, row.sha256, row.archived_at, row.occurrence
    )


def _describe(pair: Pair) -> str:
    return MessageKey(*pair).describe()


def _key_row(account: str, pair: Pair) -> tuple[ColumnElement[bool], ...]:
    uidl, occurrence = pair
    return (Message.account == account, Message.uidl == uidl, Message.occurrence == occurrence)


def _pending_row(account: str, pair: Pair) -> tuple[ColumnElement[bool], ...]:
    return (*_key_row(account, pair), Message.state == "pending")


def _has_row(connection: Connection, account: str, pair: Pair) -> bool:
    query = select(Message.id).where(*_key_row(account, pair))
    return connection.scalar(query) is not None


class _NotAllPending(Exception):
    """Some keys of a batch had no pending row (see mark_archived_many)."""

    def __init__(self, pairs: list[Pair]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _is_pending(connection: Connection, account: str, pair: Pair) -> bool:
    query = select(Message.id).where(*_pending_row(account, pair))
    return connection.scalar(query) is not None


def _pending_values(account: str, message: NewMessage) -> dict[str, Any]:
    """The messages row of ``message`` as pending, its arguments checked."""
    _check_message(
        path=message.path,
        size=message.size,
        sha256=message.sha256,
        server_size=message.server_size,
    )
    _check_hold(
        received_size=message.received_size,
        hold_reason=message.hold_reason,
        held_at=message.held_at,
    )
    require_aware(message.first_seen_at, "first_seen_at")
    uidl, occurrence = pair_of(message.key)
    return {
        "account": account,
        "uidl": uidl,
        "occurrence": occurrence,
        "state": "pending",
        "path": message.path,
        "size": message.size,
        "sha256": message.sha256,
        "server_size": message.server_size,
        "first_seen_at": message.first_seen_at,
        "received_size": message.received_size,
        "hold_reason": message.hold_reason,
        "held_at": message.held_at,
        # Explicit for every row: an executemany insert needs the same columns in each.
        "archived_at": None,
    }


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


def _check_hold(
    *, received_size: int | None, hold_reason: str | None, held_at: datetime | None
) -> None:
    if received_size is not None and received_size < 0:
        raise ValueError(f"received_size must not be negative, got {received_size}")
    if hold_reason is None:
        if held_at is not None:
            raise ValueError("held_at is given without a hold_reason")
        return
    require_reason(hold_reason)
    if held_at is None:
        raise ValueError("a hold_reason needs held_at, the time of the hold")
    require_aware(held_at, "held_at")


def _known_keys_query(
    account: str, uidls: list[str], set_aside_at: int | None
) -> Select[str, int] | CompoundSelect[str, int]:
    """Keys not to fetch: every messages row, and failures set aside."""
    queries: list[Select[str, int]] = [
        select(Message.uidl, Message.occurrence).where(Message.account == account)
    ]
    if set_aside_at is not None:
        failed = select(Failure.uidl, Failure.occurrence).where(
            Failure.account == account, Failure.attempts >= set_aside_at
        )
        queries.append(failed)
    # Past the limit, every key of the account is read and the difference
    # taken in Python: one plain statement, and no large parameter at all.
    if len(uidls) <= IN_LIST_LIMIT:
        queries = [query.where(query.selected_columns[0].in_(uidls)) for query in queries]
    return queries[0] if len(queries) == 1 else union(*queries)


# KnownRow's fields, in its order (known_rows builds each row from them in one step).
_KNOWN_COLUMNS: tuple[ColumnElement[Any], ...] = (
    Message.uidl,
    Message.occurrence,
    Message.state,
    Message.path,
    Message.size,
    Message.sha256,
    Message.server_size,
    Message.archived_at,
    # Only whether: decoding two more timestamps a row costs a full listing ~0.2 s.
    # (An IS NOT NULL is typed Boolean: SQLite's 0/1 become bool in decoded_columns.)
    Message.deleted_at.is_not(None).label("deleted"),
    Message.gone_at.is_not(None).label("gone"),
    Message.hold_reason,
)

# A KnownRow from the values of one row in _KNOWN_COLUMNS order, in C: what
# KnownRow._make does, without a Python call per row (a full listing builds 100k).
_make_known_row: Callable[[Iterable[Any]], KnownRow] = partial(tuple.__new__, KnownRow)


def _totals_added(
    connection: Connection, account: str, messages: int, octets: int, *, only_make: bool = False
) -> Any:
    """The account's row of account_totals, made or added to (``only_make``: made if missing)."""
    values = {"account": account, "archived_messages": messages, "archived_octets": octets}
    statement = upsert_insert(connection, AccountTotals).values(values)
    if only_make:
        return statement.on_conflict_do_nothing(index_elements=[AccountTotals.account])
    return statement.on_conflict_do_update(
        index_elements=[AccountTotals.account],
        set_={
            "archived_messages": AccountTotals.archived_messages + messages,
            "archived_octets": AccountTotals.archived_octets + octets,
        },
    )


def _grouped_by_uidl(rows: list[KnownRow]) -> dict[str, list[KnownRow]]:
    """Rows ordered by UIDL then occurrence, as lists by UIDL (in that order).

    Nearly every UIDL has one row: those lists are made in C (``zip`` gives
    each row its own 1-tuple, ``list`` turns it into a list), without a
    Python step per row; only the UIDLs with several occurrences are
    gathered one by one.
    """
    uidls = [row.uidl for row in rows]
    found = dict(zip(uidls, map(list, zip(rows, strict=True)), strict=True))
    if len(found) < len(rows):
        shared = {uidl for uidl, count in Counter(uidls).items() if count > 1}
        for uidl in shared:
            found[uidl] = []  # keeps its place: the first row's
        for row in rows:
            if row.uidl in shared:
                found[row.uidl].append(row)
    return found


def _known_rows_query(
    account: str, uidls: list[str], connection: Connection
) -> Select[*tuple[Any, ...]]:
    """The rows of ``uidls`` and of every shared UIDL, by UIDL then occurrence.

    Any UIDL with a second occurrence is shared; the subquery finds them
    through the (account, uidl, occurrence) unique index, and finds nothing
    in the common mailbox where no UIDL is shared.
    """
    shared = select(Message.uidl).where(Message.account == account, Message.occurrence > 1)
    member: ColumnElement[bool] = Message.uidl.in_(shared)
    if uidls:
        member = or_(among(Message.uidl, uidls, connection), member)
    return (
        select(*map(undecoded, _KNOWN_COLUMNS))
        .where(Message.account == account, member)
        .order_by(Message.uidl, Message.occurrence)
    )
