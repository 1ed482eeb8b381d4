"""Helpers shared by the ledger tests: recording messages, peeking at columns."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from popvault.ledger import Ledger
from popvault.ledger.models import Message

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(ledger: Ledger, uidl: str, *, account: str = "alice", size: int = 10) -> None:
    ledger.record_pending(
        account,
        uidl,
        path=f"{account}/new/{uidl}.eml",
        size=size,
        sha256=sha(uidl),
        server_size=size + 2,
        first_seen_at=T0,
    )


def archive(
    ledger: Ledger, uidl: str, *, account: str = "alice", at: datetime | None = None
) -> None:
    record(ledger, uidl, account=account)
    ledger.mark_archived(account, uidl, archived_at=at or T0 + timedelta(seconds=1))


def column(ledger: Ledger, name: str, *, account: str = "alice") -> dict[str, Any]:
    """uidl -> the value of one messages column, for the account's rows."""
    query = select(Message.uidl, getattr(Message, name)).where(Message.account == account)
    with ledger._engine.connect() as connection:
        return dict(connection.execute(query).all())


def fill(ledger: Ledger, account: str, uidls: list[str], **extra: Any) -> None:
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
            **extra,
        }
        for uidl in uidls
    ]
    if rows:
        with ledger._engine.begin() as connection:
            connection.execute(insert(Message), rows)
