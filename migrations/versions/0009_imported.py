"""The messages other tools retrieved before popvault: archived elsewhere.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Issue 12 part 1. ``popvault import getmail6|fetchmail|mpop FILE`` records
the UIDLs another fetcher's state file names, and ``popvault import maildir``
the messages it matched to the files of a Maildir such a tool wrote. A run
never fetches them, and retention never deletes their server copies unless
the import allowed it (``allow_delete``): popvault holds no copy of its own.
One row per (account, UIDL), as the other tools know a message by its UIDL.

Migrations are frozen: they spell out what they build instead of importing
the models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the imported table."""
    binary = sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "imported",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", binary, nullable=False),
        sa.Column("uidl", binary, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.Column("seen_at", timestamp, nullable=True),
        sa.Column("imported_at", timestamp, nullable=False),
        sa.Column("allow_delete", sa.Boolean(), nullable=False),
        sa.Column("deleted_at", timestamp, nullable=True),
        sa.CheckConstraint(
            "source IN ('getmail6', 'fetchmail', 'mpop', 'maildir')",
            name=op.f("ck_imported_source"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imported")),
        sa.UniqueConstraint("account", "uidl", name=op.f("uq_imported_account_uidl")),
    )


def downgrade() -> None:
    """Drop the imported table (its messages would be fetched again)."""
    op.drop_table("imported")
