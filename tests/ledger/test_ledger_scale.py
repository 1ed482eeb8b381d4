"""unarchived() on a mailbox of 100k messages: fast, and a constant number of queries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import insert

from popvault.ledger import Ledger
from popvault.ledger.models import Message

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SERVER_UIDLS = 100_000
KNOWN = 60_000


def fill(ledger: Ledger, account: str, uidls: list[str]) -> None:
    """Bulk-load archived rows directly: record_pending one by one fsyncs each."""
    rows = [
        {
            "account": account,
            "uidl": uidl,
            "state": "archived",
            "size": 1,
            "sha256": "0" * 64,
            "path": f"cur/{uidl}",
            "first_seen_at": T0,
            "archived_at": T0,
        }
        for uidl in uidls
    ]
    with ledger._engine.begin() as connection:
        connection.execute(insert(Message), rows)


def test_unarchived_100k_is_fast_and_constant(ledger: Ledger, statements: list[str]) -> None:
    server = [f"{i:08x}-{'AbCd'[i % 4]}" for i in range(SERVER_UIDLS)]
    fill(ledger, "alice", server[:KNOWN])
    fill(ledger, "bob", server[KNOWN:])  # another account's rows must not count
    statements.clear()

    ledger.unarchived("alice", server[:3])
    few = len(statements)
    statements.clear()

    started = time.perf_counter()
    missing = ledger.unarchived("alice", server)
    elapsed = time.perf_counter() - started

    assert missing == server[KNOWN:]
    assert len(statements) == few
    # "Well under a second" on a developer machine; 1 s leaves CI headroom.
    assert elapsed < 1.0, f"unarchived took {elapsed:.3f}s"
