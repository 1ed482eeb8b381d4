"""Messages archived elsewhere: the UIDLs another tool retrieved before popvault.

``popvault import`` records them (:meth:`ImportsMixin.record_imported`); a
run leaves them unfetched (:meth:`ImportsMixin.imported_among`) and deletes
their server copies only where the import allowed it
(:meth:`ImportsMixin.mark_imported_deleted` once QUIT confirmed the DELEs).
See :class:`~popvault.ledger.models.Imported`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select, update

from popvault.gcpause import cyclic_gc_paused
from popvault.ledger.core import (
    LedgerCore,
    among,
    decoded_columns,
    require_aware,
    undecoded,
    upsert_insert,
)
from popvault.ledger.models import IMPORT_SOURCES, Imported, Message
from popvault.ledger.records import ImportedMessage, ImportedUidl, ImportOutcome

# Rows inserted per statement: a 100k-UIDL state file is 200 statements, each
# far below the drivers' parameter limits (5 columns a row; SQLite allows
# 32766 parameters since 3.32, PostgreSQL's protocol 65535).
_INSERT_BATCH = 500

# The columns of an ImportedMessage, in its order.
_IMPORTED_COLUMNS: tuple[ColumnElement[Any], ...] = (
    Imported.uidl,
    Imported.source,
    Imported.seen_at,
    Imported.imported_at,
    Imported.allow_delete,
    Imported.deleted_at,
)
# An ImportedMessage from one row's values, in C (as messages._make_known_row).
_make_imported: Callable[[Iterable[Any]], ImportedMessage] = partial(tuple.__new__, ImportedMessage)


class ImportsMixin(LedgerCore):
    """The Ledger's messages archived elsewhere."""

    def record_imported(
        self,
        account: str,
        entries: Sequence[ImportedUidl],
        *,
        source: str,
        allow_delete: bool,
        at: datetime,
    ) -> ImportOutcome:
        """Record ``entries`` as archived elsewhere, in one transaction.

        A UIDL already imported keeps its first import (importing twice
        changes nothing), and one the ledger has in ``messages`` is left out
        (popvault holds its own copy of it). Entries repeating a UIDL count
        once, the first one.
        """
        if source not in IMPORT_SOURCES:
            raise ValueError(f"unknown import source {source!r}; one of {IMPORT_SOURCES}")
        require_aware(at, "at")
        unique = list({entry.uidl: entry for entry in reversed(entries)}.values())[::-1]
        uidls = [entry.uidl for entry in unique]
        with self._writing() as connection:
            archived = _uidls_with_rows(connection, account, uidls)
            before = _count(connection, account)
            rows = [
                {
                    "account": account,
                    "uidl": entry.uidl,
                    "source": source,
                    "source_file": entry.source_file,
                    "seen_at": entry.seen_at,
                    "imported_at": at,
                    "allow_delete": allow_delete,
                }
                for entry in unique
                if entry.uidl not in archived
            ]
            for start in range(0, len(rows), _INSERT_BATCH):
                statement = upsert_insert(connection, Imported).on_conflict_do_nothing(
                    index_elements=["account", "uidl"]
                )
                connection.execute(statement, rows[start : start + _INSERT_BATCH])
            recorded = _count(connection, account) - before
        return ImportOutcome(
            recorded=recorded,
            already_imported=len(rows) - recorded,
            already_archived=len(archived),
        )

    def imported_among(self, account: str, uidls: Sequence[str]) -> dict[str, ImportedMessage]:
        """The account's imported UIDLs among ``uidls``, whatever their state."""
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return {}
        with self._reading() as connection:
            query = select(*map(undecoded, _IMPORTED_COLUMNS)).where(
                Imported.account == account, among(Imported.uidl, wanted, connection)
            )
            with cyclic_gc_paused():  # a few objects per imported message: popvault.gcpause
                rows = connection.execute(query).all()
                # Each column decoded once per distinct value: an import's rows share
                # their times (ledger.core.decoded_columns), and a run of a mailbox of
                # 100k imported messages reads them all.
                columns = decoded_columns(rows, _IMPORTED_COLUMNS, connection.dialect)
                made = map(_make_imported, zip(*columns, strict=True))
                return {message.uidl: message for message in made}

    def mark_imported_deleted(self, account: str, uidls: Sequence[str], *, at: datetime) -> None:
        """Note that the server deleted these imported messages (QUIT's +OK after their DELEs)."""
        require_aware(at, "at")
        wanted = list(dict.fromkeys(uidls))
        if not wanted:
            return
        with self._writing() as connection:
            connection.execute(
                update(Imported)
                .where(
                    Imported.account == account,
                    Imported.deleted_at.is_(None),
                    among(Imported.uidl, wanted, connection),
                )
                .values(deleted_at=at)
            )

    def imported_files(self, account: str, *, under: str) -> list[str]:
        """The files of the account's Maildir imports that lie in the folder ``under``.

        ``popvault import maildir`` of the account's own archive folder (its
        ledger lost) adopts popvault's own files: the run's check of a
        folder the ledger does not know, and ``popvault verify``, know them
        from this.
        """
        prefix = under.rstrip("/") + "/"
        query = select(Imported.source_file).where(
            Imported.account == account,
            Imported.source == "maildir",
            Imported.source_file.startswith(prefix, autoescape=True),
        )
        with self._reading() as connection:
            return list(connection.scalars(query).all())


def _uidls_with_rows(connection: Connection, account: str, uidls: list[str]) -> set[str]:
    """Which of ``uidls`` the account has message rows of (any state)."""
    if not uidls:
        return set()
    query = (
        select(Message.uidl)
        .where(Message.account == account, among(Message.uidl, uidls, connection))
        .distinct()
    )
    return set(connection.scalars(query).all())


def _count(connection: Connection, account: str) -> int:
    query = select(func.count()).select_from(Imported).where(Imported.account == account)
    return int(connection.scalar(query) or 0)
