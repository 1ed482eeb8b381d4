"""Helpers shared by the ledger tests: recording messages, peeking at columns."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from sqlalchemy import Connection, Engine, case, delete, func, insert, select

from popvault.ledger import KeyLike, Ledger, as_key
from popvault.ledger.engine import WRITE_INTENT
from popvault.ledger.migrate import alembic_config
from popvault.ledger.models import AccountTotals, Message

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha_of(key: KeyLike) -> str:
    """The sha256 record() gives a message: occurrence 1 hashes the plain UIDL."""
    key = as_key(key)
    return sha(key.uidl if key.occurrence == 1 else f"{key.uidl}#{key.occurrence}")


def path_of(key: KeyLike, account: str = "alice") -> str:
    """The path record() gives a message: occurrence 1 keeps the plain UIDL name."""
    key = as_key(key)
    suffix = "" if key.occurrence == 1 else f".{key.occurrence}"
    return f"{account}/new/{key.uidl}{suffix}.eml"


def record(
    ledger: Ledger,
    key: KeyLike,
    *,
    account: str = "alice",
    size: int = 10,
    server_size: int | None = None,
    **extra: Any,
) -> None:
    """record_pending with made-up values: the server listed ``size + 2`` by default."""
    ledger.record_pending(
        account,
        key,
        path=path_of(key, account),
        size=size,
        sha256=sha_of(key),
        server_size=size + 2 if server_size is None else server_size,
        first_seen_at=T0,
        **extra,
    )


def archive(
    ledger: Ledger,
    key: KeyLike,
    *,
    account: str = "alice",
    at: datetime | None = None,
    **extra: Any,
) -> None:
    record(ledger, key, account=account, **extra)
    ledger.mark_archived(account, key, archived_at=at or T0 + timedelta(seconds=1))


def column(ledger: Ledger, name: str, *, account: str = "alice") -> dict[str, Any]:
    """uidl -> the value of one messages column, for the account's rows."""
    query = select(Message.uidl, getattr(Message, name)).where(Message.account == account)
    with ledger._engine.connect() as connection:
        return dict(connection.execute(query).all())


def by_key(ledger: Ledger, name: str, *, account: str = "alice") -> dict[tuple[str, int], Any]:
    """(uidl, occurrence) -> the value of one messages column, for the account's rows."""
    query = select(Message.uidl, Message.occurrence, getattr(Message, name)).where(
        Message.account == account
    )
    with ledger._engine.connect() as connection:
        return {(uidl, occurrence): value for uidl, occurrence, value in connection.execute(query)}


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
            recount_totals(connection, account)


def recount_totals(connection: Connection, account: str) -> None:
    """The account's account_totals row counted again, after rows loaded around the Ledger."""
    connection.execute(delete(AccountTotals).where(AccountTotals.account == account))
    archived = Message.state == "archived"
    counted = (
        select(
            Message.account,
            func.sum(case((archived, 1), else_=0)),
            func.sum(case((archived, Message.size), else_=0)),
        )
        .where(Message.account == account)
        .group_by(Message.account)
    )
    columns = ["account", "archived_messages", "archived_octets"]
    connection.execute(insert(AccountTotals).from_select(columns, counted))


def migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    """Run Alembic to ``revision`` the way popvault runs it: one write transaction."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_INTENT: True})
        with connection.begin():
            config = alembic_config()
            config.attributes["connection"] = connection
            if down:
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)
