"""known_rows decodes each column once per distinct value: the same rows as per-row decoding."""

from __future__ import annotations

from datetime import timedelta

from ledger_helpers import T0, archive, record
from sqlalchemy import select

from popvault.ledger import KnownRow, Ledger, MessageKey
from popvault.ledger.messages import _KNOWN_COLUMNS
from popvault.ledger.models import Message


def _reference(ledger: Ledger, account: str) -> dict[str, list[KnownRow]]:
    """Every row of the account as a plain execute decodes it, row by row."""
    query = (
        select(*_KNOWN_COLUMNS)
        .where(Message.account == account)
        .order_by(Message.uidl, Message.occurrence)
    )
    found: dict[str, list[KnownRow]] = {}
    with ledger._engine.connect() as connection:
        for row in connection.execute(query):
            found.setdefault(row[0], []).append(KnownRow(*row))
    return found


def test_known_rows_equal_per_row_decoding(ledger: Ledger) -> None:
    # Shared and repeated archive times, pending rows (no time), flags both ways, holds.
    for n in range(12):
        archive(ledger, f"m{n}", at=T0 + timedelta(seconds=n % 3), server_size=None if n % 4 else 7)
    record(ledger, "pending")
    archive(ledger, MessageKey("m1", 2), at=T0 + timedelta(days=2))
    ledger.mark_deleted("alice", ["m2"], at=T0 + timedelta(days=1))
    ledger.hold("alice", "m3", reason="sizes differ", at=T0)
    ledger.reconcile("alice", [f"m{n}" for n in range(12) if n != 5], now=T0 + timedelta(days=3))
    archive(ledger, "m0", account="bob")

    uidls = ["pending", *(f"m{n}" for n in range(12))]
    rows = ledger.known_rows("alice", uidls)

    reference = _reference(ledger, "alice")
    assert rows == {uidl: reference[uidl] for uidl in uidls}
    assert list(rows) == uidls
    flags = [(row.deleted, row.gone) for group in rows.values() for row in group]
    assert {type(value) for pair in flags for value in pair} == {bool}
    assert (True, False) in flags
    assert (False, True) in flags
    assert all(
        row.archived_at is None or row.archived_at.utcoffset() == timedelta(0)
        for group in rows.values()
        for row in group
    )


def test_known_rows_of_an_empty_account(ledger: Ledger) -> None:
    assert ledger.known_rows("nobody", ["a", "b"]) == {}
    assert ledger.known_rows("nobody", []) == {}
