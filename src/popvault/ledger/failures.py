"""Failures: messages that could not be archived, counted per attempt.

A message that keeps failing is set aside after ``max_attempts`` (see
:meth:`~popvault.ledger.messages.MessagesMixin.unarchived`) so that one bad
message cannot stall an account's every run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, bindparam, delete, select

from popvault.ledger.core import LedgerCore, pair_of, require_aware, upsert_insert
from popvault.ledger.models import Failure
from popvault.ledger.records import FailedMessage, KeyLike

# A failure's error text is kept to this many characters: enough for a
# server's -ERR line or an OS error, not for a megabyte of traceback.
_MAX_ERROR_CHARS = 2000


class FailuresMixin(LedgerCore):
    """The Ledger's failure records: one row per message that failed, with its count.

    A message is a key: a UIDL (occurrence 1) or a :class:`MessageKey`.
    """

    def record_failure(self, account: str, key: KeyLike, *, error: str, at: datetime) -> int:
        """Count one more failed attempt to archive ``key``; return the attempts so far.

        ``error`` (what went wrong, never a password) is kept, clipped to
        2000 characters, as the latest error.
        """
        require_aware(at, "at")
        uidl, occurrence = pair_of(key)
        values = {
            "account": account,
            "uidl": uidl,
            "occurrence": occurrence,
            "attempts": 1,
            "first_failed_at": at,
            "last_failed_at": at,
            "last_error": error[:_MAX_ERROR_CHARS],
        }
        with self._writing() as connection:
            attempts = connection.execute(_failure_upsert(connection, values)).scalar_one()
        return int(attempts)

    def clear_failure(self, account: str, key: KeyLike) -> None:
        """Forget the failures of ``key`` (it archived at last); no-op if none."""
        uidl, occurrence = pair_of(key)
        statement = delete(Failure).where(
            Failure.account == account, Failure.uidl == uidl, Failure.occurrence == occurrence
        )
        with self._writing() as connection:
            connection.execute(statement)

    def failures(self, account: str) -> list[FailedMessage]:
        """The account's failed messages, the earliest failure first."""
        with self._reading() as connection:
            rows = connection.execute(_FAILURES_QUERY, {"account": account})
            return [FailedMessage(*row) for row in rows]


# Built once: every run's plan asks (statements cost about as much CPU to
# build as to run on SQLite: the daemon's idle tick).
_FAILURES_QUERY = (
    select(
        Failure.uidl,
        Failure.attempts,
        Failure.first_failed_at,
        Failure.last_failed_at,
        Failure.last_error,
        Failure.occurrence,
    )
    .where(Failure.account == bindparam("account"))
    .order_by(Failure.first_failed_at, Failure.id)
)


def _failure_upsert(connection: Connection, values: dict[str, Any]) -> Insert:
    """INSERT, or on (account, uidl, occurrence) add one attempt and keep the latest error.

    ON CONFLICT must name the unique constraint's columns exactly; a plain
    UIDL is occurrence 1 (the column's default).
    """
    statement = upsert_insert(connection, Failure).values(values)
    updated = {
        "attempts": Failure.attempts + 1,
        "last_failed_at": statement.excluded.last_failed_at,
        "last_error": statement.excluded.last_error,
    }
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=[Failure.account, Failure.uidl, Failure.occurrence], set_=updated
    )
    return upsert.returning(Failure.attempts)
