"""Indexes for 10,000 accounts: the daemons' claim of due accounts, status's latest runs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Issue 11 parts 3 and 4. Every daemon asks the ledger for due accounts at
least once a second (``WHERE next_run_at <= now ORDER BY next_run_at LIMIT
k``, popvault.ledger.dispatch): without an index that is a scan and a sort
of every account's row, 10,000 of them at the scale the issue sets; with it,
a walk of the few due rows in order.

``popvault status`` reads each account's latest run and latest success
(``max(id)`` per account, and its latest ``ended_at`` with outcome ok): with only an index
on ``runs.account`` that visits every run of every account, twice (3.9 s at
a million runs, 58 s at ten million: benchmarks/ledger_scale.py); on
(account, id) and (account, outcome, ended_at) each is one probe. They replace
the index on account alone, which both begin with.

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
    """Index the schedules by their next run, and the runs for status."""
    op.create_index("ix_schedules_next_run_at", "schedules", ["next_run_at"])
    op.create_index("ix_runs_account_id", "runs", ["account", "id"])
    op.create_index("ix_runs_account_outcome_ended_at", "runs", ["account", "outcome", "ended_at"])
    op.drop_index("ix_runs_account", table_name="runs")


def downgrade() -> None:
    """Back to the index on runs.account alone, and none on the schedules."""
    op.create_index("ix_runs_account", "runs", ["account"])
    op.drop_index("ix_runs_account_outcome_ended_at", table_name="runs")
    op.drop_index("ix_runs_account_id", table_name="runs")
    op.drop_index("ix_schedules_next_run_at", table_name="schedules")
