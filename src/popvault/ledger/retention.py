"""Retention: archived messages still on the server, their deletion, reconciliation.

RFC 1939 section 6 deletes only once QUIT is answered, so a deletion is
first requested, then confirmed; :meth:`RetentionMixin.reconcile` settles
the uncertain ones against the server's next full UIDL list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Label,
    Row,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)

from popvault.gcpause import cyclic_gc_paused
from popvault.ledger.core import (
    IN_LIST_LIMIT,
    LedgerCore,
    Pair,
    among,
    decoded_columns,
    pair_of,
    pairs_among,
    require_aware,
    uidls_of,
    undecoded,
    unique_pairs,
)
from popvault.ledger.models import Failure, Message, UTCDateTime
from popvault.ledger.records import KeyLike, Reconciled, RetainedMessage, RetentionSummary


class RetentionMixin(LedgerCore):
    """The Ledger's retention: what is still on the server, and what left it.

    Messages are named by key: a UIDL (occurrence 1) or a :class:`MessageKey`.
    """

    def retained(self, account: str, keys: Sequence[KeyLike]) -> list[RetainedMessage]:
        """The archived messages among ``keys`` still on the server as far as
        the ledger knows (neither deleted nor gone), in input order, once each.

        A held message is among them, with its ``hold_reason``: the caller
        must not delete its server copy.
        """
        wanted = unique_pairs(keys)
        if not wanted:
            return []
        query = select(*map(undecoded, _RETAINED_COLUMNS)).where(*_retained_rows(account))
        uidls = uidls_of(wanted)
        if len(uidls) <= IN_LIST_LIMIT:
            query = query.where(Message.uidl.in_(uidls))
        with self._reading() as connection, cyclic_gc_paused():
            rows = connection.execute(query).all()
        with cyclic_gc_paused():
            columns = decoded_columns(rows, _RETAINED_COLUMNS, connection.dialect)
            # Built in C, without a Python call per row: a mailbox kept on the
            # server has a retained row per message, 100k for a 100k mailbox.
            messages = map(_make_retained, zip(*columns, strict=True))
            found = {(message.uidl, message.occurrence): message for message in messages}
            return [found[pair] for pair in wanted if pair in found]

    def mark_delete_requested(self, account: str, keys: Sequence[KeyLike], *, at: datetime) -> None:
        """Note that the server accepted DELE for ``keys`` at ``at``, before QUIT.

        Until :meth:`mark_deleted`, the deletion is uncertain: RFC 1939
        section 6 deletes only once QUIT is answered, and that answer may be
        lost. :meth:`reconcile` settles it in the next session. This records
        what happened, so a hold does not stop it: keeping held copies is
        the caller's choice of deletions.
        """
        require_aware(at, "at")
        self._update_retained(account, keys, delete_requested_at=at)

    def mark_deleted(self, account: str, keys: Sequence[KeyLike], *, at: datetime) -> None:
        """Record that QUIT answered +OK, so the server deleted ``keys`` at ``at``."""
        require_aware(at, "at")
        self._update_retained(account, keys, deleted_at=at, delete_requested_at=None)

    def reconcile(
        self, account: str, keys_on_server: Sequence[KeyLike], *, now: datetime
    ) -> Reconciled:
        """Settle the account's retained messages against the server's full listing.

        Call it first in every session, with the key of every message the
        server lists (a plain UIDL is occurrence 1; the caller matches a UIDL
        listed several times to its occurrences). A retained message whose
        key is missing was deleted by popvault if a DELE was requested (its
        ``deleted_at`` becomes the request time), else taken by another client
        (``gone_at = now``). A request for a message still there is cleared:
        that session never reached QUIT. A message marked gone that the server
        lists again (a server that hid it for a while, or a listing that came
        back short) is live again, so retention applies to it once more.
        Failure records of messages no longer on the server are dropped. A few
        reads plus a few set-wise writes.
        """
        require_aware(now, "now")
        on_server = frozenset(pair_of(key) for key in keys_on_server)
        with self._writing() as connection:
            live = connection.execute(_LIVE_QUERY, {"account": account}).all()
            plan = _ReconcilePlan.of(live, on_server)
            settled = plan.apply(connection, now)
            returned = _revive_returned(connection, account, on_server)
            _drop_stale_failures(connection, account, on_server)
        return replace(settled, returned=returned)

    def retention_summary(self, account: str, *, cutoff: datetime | None) -> RetentionSummary:
        """Count the account's retained messages, those due at ``cutoff``, and those held.

        Due: archived at or before ``cutoff`` (none when it is None) and not
        held. The caller passes ``now - duration`` (or ``now`` for
        delete-at-once) and adds the duration back to
        ``next_due_archived_at``, which held messages never set either: a
        status must not promise a deletion that every run will refuse.
        """
        live = _retained_rows(account)
        if cutoff is None:
            counts = select(func.count().label("retained"), _held_count())
            with self._reading() as connection:
                row = connection.execute(counts.where(*live)).one()
            return RetentionSummary(int(row.retained), 0, None, held=int(row.held or 0))
        require_aware(cutoff, "cutoff")
        with self._reading() as connection:
            row = connection.execute(_summary_query(cutoff).where(*live)).one()
        return RetentionSummary(
            int(row.retained), int(row.due or 0), row.next_due, held=int(row.held or 0)
        )

    def _update_retained(
        self, account: str, keys: Sequence[KeyLike], **values: datetime | None
    ) -> None:
        wanted = unique_pairs(keys)
        if not wanted:
            return
        with self._writing() as connection:
            member = pairs_among(Message.uidl, Message.occurrence, wanted, connection)
            statement = update(Message).where(*_retained_rows(account), member).values(values)
            connection.execute(statement)


def _retained_rows(account: str | BindParameter[str]) -> tuple[ColumnElement[bool], ...]:
    """Archived rows of the account the server still has, as far as we know."""
    return (
        Message.account == account,
        Message.state == "archived",
        Message.deleted_at.is_(None),
        Message.gone_at.is_(None),
    )


_RETAINED_COLUMNS: tuple[ColumnElement[Any], ...] = (
    Message.uidl,
    Message.path,
    Message.size,
    Message.archived_at,
    Message.server_size,
    Message.occurrence,
    Message.hold_reason,
)


# A RetainedMessage from one row's values in _RETAINED_COLUMNS order (its fields'
# order). archived_at is never None here: ck_messages_archived_at forbids it.
_make_retained: Callable[[Iterable[Any]], RetainedMessage] = partial(tuple.__new__, RetainedMessage)


@dataclass(slots=True)
class _ReconcilePlan:
    """Row ids of retained messages, sorted by what :meth:`Ledger.reconcile` does."""

    deleted: list[int]
    gone: list[int]
    cleared: list[int]

    @classmethod
    def of(
        cls, rows: Iterable[Row[int, str, int, bool]], on_server: frozenset[Pair]
    ) -> _ReconcilePlan:
        """Sort (id, uidl, occurrence, delete requested) rows; positional, one
        pass: nearly every row is on the server and not requested."""
        plan = cls([], [], [])
        for row_id, uidl, occurrence, requested in rows:
            if (uidl, occurrence) in on_server:
                if requested:
                    plan.cleared.append(row_id)
            elif requested:
                plan.deleted.append(row_id)
            else:
                plan.gone.append(row_id)
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
        .where(among(Message.id, ids, connection))
        .where(Message.deleted_at.is_(None), Message.gone_at.is_(None))
        .values(values)
    )
    return connection.execute(statement).rowcount


# reconcile's reads, built once: every session sends them (statements cost
# about as much CPU to build as to run on SQLite: the daemon's idle tick).
# Only whether a DELE was requested: decoding a timestamp per retained row
# would cost a 100k-message mailbox ~0.1 s in every run.
_LIVE_QUERY = select(
    Message.id,
    Message.uidl,
    Message.occurrence,
    Message.delete_requested_at.is_not(None).label("requested"),
).where(*_retained_rows(bindparam("account")))
_GONE_QUERY = select(Message.id, Message.uidl, Message.occurrence).where(
    Message.account == bindparam("account"),
    Message.state == "archived",
    Message.deleted_at.is_(None),
    Message.gone_at.is_not(None),
)
_FAILED_QUERY = select(Failure.id, Failure.uidl, Failure.occurrence).where(
    Failure.account == bindparam("account")
)


def _revive_returned(connection: Connection, account: str, on_server: frozenset[Pair]) -> int:
    """Clear gone_at of archived rows the server lists again; returns how many."""
    gone = connection.execute(_GONE_QUERY, {"account": account})
    back = [row.id for row in gone if (row.uidl, row.occurrence) in on_server]
    if not back:
        return 0
    statement = update(Message).where(among(Message.id, back, connection)).values(gone_at=None)
    return connection.execute(statement).rowcount


def _drop_stale_failures(connection: Connection, account: str, on_server: frozenset[Pair]) -> None:
    """A failure record of a message the server no longer has can never clear."""
    failed = connection.execute(_FAILED_QUERY, {"account": account})
    stale = [row.id for row in failed if (row.uidl, row.occurrence) not in on_server]
    if stale:
        connection.execute(delete(Failure).where(among(Failure.id, stale, connection)))


def _held_count() -> Label[Any]:
    held = case((Message.hold_reason.is_not(None), 1), else_=0)
    return func.sum(held).label("held")


def _summary_query(cutoff: datetime) -> Select[int, int | None, datetime | None, int | None]:
    """Retained, due and held counts and the next due time; held rows are never due."""
    free = Message.hold_reason.is_(None)
    due = case((and_(free, Message.archived_at <= cutoff), 1), else_=0)
    later = case((and_(free, Message.archived_at > cutoff), Message.archived_at))
    return select(
        func.count().label("retained"),
        func.sum(due).label("due"),
        func.min(later, type_=UTCDateTime()).label("next_due"),
        _held_count(),
    )
