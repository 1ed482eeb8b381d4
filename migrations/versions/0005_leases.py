"""Leases: which daemon holds an account, until when, under which fencing token.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

Issue 11 part 2. A session advisory lock outlives a *stalled* holder (SIGSTOP,
a VM freeze, a half-open TCP connection keeps it for as long as PostgreSQL
keeps the session); a lease expires, and its fencing token (one more with
every claim, never reused: the row is never deleted) lets every write of a
run check that the run still holds the account (popvault.ledger.leases).

A new table only: nothing existing changes, and downgrade drops it.

Migrations are frozen: they spell out their types instead of importing the
models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the leases table."""
    binary = sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")
    op.create_table(
        "leases",
        sa.Column("account", binary, nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("owner_host", sa.String(255), nullable=False),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("daemon_id", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("server_host", sa.String(255), nullable=True),
        sa.CheckConstraint("token >= 1", name=op.f("ck_leases_token")),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_leases")),
    )
    op.create_index(
        op.f("ix_leases_server_host_expires_at"), "leases", ["server_host", "expires_at"]
    )


def downgrade() -> None:
    """Drop the leases table (and with it every account's token counter)."""
    op.drop_index(op.f("ix_leases_server_host_expires_at"), table_name="leases")
    op.drop_table("leases")
