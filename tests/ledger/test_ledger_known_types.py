"""known_rows hands out KnownRows with real bools and aware times, on every backend."""

from __future__ import annotations

from datetime import timedelta

from ledger_helpers import T0, fill

from popvault.ledger import KnownRow, Ledger


def test_known_rows_are_typed_as_declared(ledger: Ledger) -> None:
    fill(ledger, "alice", ["kept", "deleted"])
    ledger.mark_deleted("alice", ["deleted"], at=T0 + timedelta(days=1))
    rows = ledger.known_rows("alice", ["kept", "deleted"])
    kept, deleted = rows["kept"][0], rows["deleted"][0]
    assert isinstance(kept, KnownRow)
    # The query's IS NOT NULL columns come back as bool, not SQLite's 0/1.
    assert (type(kept.deleted), type(kept.gone)) == (bool, bool)
    assert (kept.deleted, deleted.deleted) == (False, True)
    assert kept.archived_at is not None
    assert kept.archived_at.utcoffset() == timedelta(0)
    assert kept.key.uidl == "kept"
