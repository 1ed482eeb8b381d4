"""Which ledger this is, and a few of the files it vouches for: the archive marker's needs.

The archive root keeps the ledger's id in a marker file (popvault.store.marker),
so that a daemon pointed at an archive that is not this ledger's refuses to
start. :meth:`LedgerIdMixin.ledger_id` reads the id (one row, made with the
ledger: migration 0006, or :func:`~popvault.ledger.migrate.create_fresh`);
:meth:`LedgerIdMixin.archived_sample` names the files archived last, which
must be in a folder that has no marker yet before popvault writes one there.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from popvault.errors import LedgerError
from popvault.ledger.core import LedgerCore, among
from popvault.ledger.models import LedgerIdentity, Message

# 128 random bits: two ledgers never draw the same id.
_ID_BYTES = 16


def new_ledger_id() -> str:
    """A new ledger's id: 32 random hex digits."""
    return secrets.token_hex(_ID_BYTES)


def insert_identity(connection: Connection) -> None:
    """Give a ledger being created its id (inside the creating transaction)."""
    connection.execute(
        insert(LedgerIdentity).values(id=new_ledger_id(), created_at=datetime.now(UTC))
    )


class LedgerIdMixin(LedgerCore):
    """The Ledger's id, and the paths of the files it archived last."""

    def ledger_id(self) -> str:
        """This ledger's id: 32 hex digits, the same in every copy ``popvault db copy`` makes.

        Raises :class:`LedgerError` when the ledger has no id row, or more than
        one: its ``ledger_identity`` table was changed by hand.
        """
        with self._reading() as connection:
            ids = list(connection.scalars(select(LedgerIdentity.id).limit(2)))
        if len(ids) != 1:
            found = "no row" if not ids else "more than one row"
            raise LedgerError(
                f"the ledger {self.url} has {found} in its ledger_identity table, which popvault "
                "writes once, when it creates the ledger: it was changed by other means; "
                "restore the ledger from a backup"
            )
        return ids[0]

    def archived_sample(
        self,
        limit: int,
        *,
        accounts: Collection[str] | None = None,
        exclude: Collection[str] = (),
    ) -> list[str]:
        """The paths (relative to the archive root) of the ``limit`` messages archived last.

        "Last" by row id, newest first. ``accounts`` keeps only those accounts'
        messages; ``exclude`` leaves those accounts' out. Pending rows do not
        count: their files may never have been published.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._reading() as connection:
            conditions: list[Any] = [Message.state == "archived"]
            if accounts is not None:
                conditions.append(among(Message.account, sorted(accounts), connection))
            if exclude:
                conditions.append(~among(Message.account, sorted(exclude), connection))
            query = select(Message.path).where(*conditions).order_by(Message.id.desc()).limit(limit)
            return list(connection.scalars(query))
