"""Ledger identity: one row naming this ledger by a random id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14

Issue 11 part 3. The archive root keeps the ledger's id in a marker file
(``.popvault-ledger``, popvault.store.marker): a daemon whose archive root is
not the one the ledger's files live in (another popvault's archive, an
unmounted or wrong share) refuses to start. The upgrade makes the id: a
ledger from before it gets one now, and its archive root gets the marker on
the next start when the files the ledger archived last are there.

A new table and its one row: nothing existing changes, and downgrade drops it
(a later upgrade makes a new id, which an archive's marker will not know:
remove the marker then, see the README).

Migrations are frozen: they spell out their types instead of importing the
models, which will move on.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the ledger_identity table with this ledger's id."""
    table = op.create_table(
        "ledger_identity",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_identity")),
    )
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # the models' UTCDateTime: naive UTC on SQLite
    op.bulk_insert(table, [{"id": secrets.token_hex(16), "created_at": now}])


def downgrade() -> None:
    """Drop the ledger_identity table (and with it the ledger's id)."""
    op.drop_table("ledger_identity")
