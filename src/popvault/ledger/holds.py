"""Holds: server copies that retention must not delete until the user says so.

A hold is a reason, kept on the message's row with the time it was set.
popvault sets one when it cannot vouch that the archived file is the message
the server would delete, e.g. when the octets received differ from the size
the server's LIST announced (a server that substituted a message). Only the
user releases it (:meth:`HoldsMixin.release_holds`), after looking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, select, update

from popvault.errors import LedgerError
from popvault.ledger.core import (
    LedgerCore,
    pair_of,
    pairs_among,
    require_aware,
    require_reason,
    unique_pairs,
)
from popvault.ledger.models import Message
from popvault.ledger.records import HeldMessage, KeyLike, MessageKey


class HoldsMixin(LedgerCore):
    """The Ledger's holds on server copies."""

    def hold(self, account: str, key: KeyLike, *, reason: str, at: datetime) -> None:
        """Forbid retention to delete the server copy of ``key``, for ``reason``.

        A message already held keeps its first reason and time: the user
        sees since when, and a run that finds the same cause again every
        session does not keep moving it. Release it first to replace it.
        Raises :class:`LedgerError` if the account has no row for ``key``.
        """
        require_reason(reason)
        require_aware(at, "at")
        uidl, occurrence = pair_of(key)
        row = (Message.account == account, Message.uidl == uidl, Message.occurrence == occurrence)
        statement = (
            update(Message)
            .where(*row, Message.hold_reason.is_(None))
            .values(hold_reason=reason, held_at=at)
        )
        with self._writing() as connection:
            if connection.execute(statement).rowcount == 1:
                return
            if connection.scalar(select(Message.id).where(*row)) is None:
                described = MessageKey(uidl, occurrence).describe()
                raise LedgerError(f"account {account!r}: no message with {described} to hold")

    def release_holds(self, account: str, keys: Sequence[KeyLike] | None = None) -> int:
        """Release the holds of ``keys`` (None: every hold of the account).

        Retention may then delete those server copies again. Returns how
        many holds were released; keys without a hold are skipped. The LIST
        size recorded when the message was archived is forgotten too: the
        user vouched for the archived copy, so a size the server reports
        differently (the cause of many holds) no longer holds it back.
        """
        statement = (
            update(Message)
            .where(Message.account == account, Message.hold_reason.is_not(None))
            .values(hold_reason=None, held_at=None, server_size=None)
        )
        with self._writing() as connection:
            if keys is not None:
                wanted = unique_pairs(keys)
                if not wanted:
                    return 0
                member = pairs_among(Message.uidl, Message.occurrence, wanted, connection)
                statement = statement.where(member)
            return int(connection.execute(statement).rowcount)

    def held(self, account: str) -> list[HeldMessage]:
        """The account's retained messages under a hold, in the order they were recorded.

        Only messages the server still has as far as the ledger knows
        (archived, neither deleted nor gone): a hold on anything else
        protects nothing today.
        """
        query = (
            select(
                Message.uidl,
                Message.occurrence,
                Message.path,
                Message.server_size,
                Message.received_size,
                Message.hold_reason,
                Message.held_at,
            )
            .where(
                Message.account == account,
                Message.state == "archived",
                Message.deleted_at.is_(None),
                Message.gone_at.is_(None),
                Message.hold_reason.is_not(None),
            )
            .order_by(Message.id)
        )
        with self._reading() as connection:
            rows = connection.execute(query).all()
        return [_held_message(row) for row in rows]


def _held_message(
    row: Row[str, int, str, int | None, int | None, str | None, datetime | None],
) -> HeldMessage:
    reason, held_at = row.hold_reason, row.held_at
    if reason is None or held_at is None:  # pragma: no cover - the query and ck_messages_held_at
        raise LedgerError(f"held UIDL {row.uidl!r} lost its reason or time")
    return HeldMessage(
        row.uidl, row.occurrence, row.path, row.server_size, row.received_size, reason, held_at
    )
