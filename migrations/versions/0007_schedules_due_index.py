"""An index on schedules.next_run_at: the daemons' claim of due accounts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Issue 11 parts 3 and 4. Every daemon asks the ledger for due accounts at
least once a second (``WHERE next_run_at <= now ORDER BY next_run_at LIMIT
k``, popvault.ledger.dispatch): without an index that is a scan and a sort
of every account's row, 10,000 of them at the scale the issue sets; with it,
a walk of the few due rows in order.

Migrations are frozen: they spell out what they build instead of importing
the models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Index the schedules by their next run."""
    op.create_index("ix_schedules_next_run_at", "schedules", ["next_run_at"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_schedules_next_run_at", table_name="schedules")
