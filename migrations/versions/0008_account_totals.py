"""Per-account archived totals kept as they change, an index of the held messages, runs.sessions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Issue 11 part 4. ``popvault status`` and a starting daemon show each
account's archived messages and octets; counted from ``messages`` that is a
read of every row (0.5 s a million rows, 5 s at the ten million the issue
sets, every time). ``account_totals`` keeps them: the transaction that
archives a batch adds to its account's row, and the one that records pending
messages makes the row (popvault.ledger.messages), so every account with
messages has one and a status is one read of a row an account. This
migration counts the rows that are already there, in the same transaction
that creates the table.

The held messages (a hold forbids deleting the server copy) are a handful
among millions: ``ix_messages_held`` indexes only them (a partial index, on
SQLite and PostgreSQL), for status's count and ``popvault held``.

Issue 12 part 2: a run on a server that hands out a window of the mailbox
(Gmail) takes several sessions; ``runs.sessions`` records how many, for
status (1 for every run before).

Migrations are frozen: they spell out what they build instead of importing
the models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create account_totals filled from messages, the held messages' index, runs.sessions."""
    binary = sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")
    op.create_table(
        "account_totals",
        sa.Column("account", binary, nullable=False),
        sa.Column("archived_messages", sa.BigInteger(), nullable=False),
        sa.Column("archived_octets", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "archived_messages >= 0", name=op.f("ck_account_totals_archived_messages")
        ),
        sa.CheckConstraint("archived_octets >= 0", name=op.f("ck_account_totals_archived_octets")),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_account_totals")),
    )
    op.execute(
        "INSERT INTO account_totals (account, archived_messages, archived_octets) "
        "SELECT account, "
        "sum(CASE WHEN state = 'archived' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN state = 'archived' THEN size ELSE 0 END) "
        "FROM messages GROUP BY account"
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("sessions", sa.Integer(), server_default="1", nullable=False))
    # The same statement as a new ledger's (popvault.ledger.models.HELD_INDEX_DDL,
    # spelled out here: migrations are frozen), so that both have the same index.
    op.execute("CREATE INDEX ix_messages_held ON messages (account) WHERE hold_reason IS NOT NULL")


def downgrade() -> None:
    """Drop the totals (status counts the messages again), the held index, runs.sessions."""
    op.drop_index(op.f("ix_messages_held"), table_name="messages")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("sessions")
    op.drop_table("account_totals")
