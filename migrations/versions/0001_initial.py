"""The initial ledger: messages, runs, failures and the daemon's schedules.

Revision ID: 0001
Revises:
Create Date: 2025-11-29

Migrations are frozen: they spell out their types instead of importing the
models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _binary_string() -> sa.types.TypeEngine[str]:
    # UIDLs are case-sensitive (RFC 1939 section 7): byte-wise collation.
    return sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the messages, runs, failures and schedules tables."""
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", _binary_string(), nullable=False),
        sa.Column("uidl", _binary_string(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("server_size", sa.BigInteger(), nullable=True),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("archived_at", _utc(), nullable=True),
        sa.Column("deleted_at", _utc(), nullable=True),
        sa.Column("gone_at", _utc(), nullable=True),
        sa.Column("delete_requested_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("account", "uidl", name="uq_messages_account_uidl"),
        sa.CheckConstraint("state IN ('pending', 'archived')", name="ck_messages_state"),
        sa.CheckConstraint("size >= 0", name="ck_messages_size"),
        sa.CheckConstraint("length(sha256) = 64", name="ck_messages_sha256"),
        sa.CheckConstraint(
            "state = 'pending' OR archived_at IS NOT NULL", name="ck_messages_archived_at"
        ),
    )
    op.create_index("ix_messages_account_state", "messages", ["account", "state"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", _binary_string(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("ended_at", _utc(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("messages", sa.Integer(), server_default="0", nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("on_server", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.CheckConstraint("outcome IN ('running', 'ok', 'failed')", name="ck_runs_outcome"),
        sa.CheckConstraint("on_server >= 0", name="ck_runs_on_server"),
    )
    op.create_index("ix_runs_account", "runs", ["account"])
    op.create_table(
        "failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", _binary_string(), nullable=False),
        sa.Column("uidl", _binary_string(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", _utc(), nullable=False),
        sa.Column("last_failed_at", _utc(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_failures"),
        sa.UniqueConstraint("account", "uidl", name="uq_failures_account_uidl"),
        sa.CheckConstraint("attempts >= 1", name="ck_failures_attempts"),
    )
    op.create_table(
        "schedules",
        sa.Column("account", _binary_string(), nullable=False),
        sa.Column("next_run_at", _utc(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("backoff_reason", sa.Text(), nullable=True),
        sa.Column("daemon_pid", sa.Integer(), nullable=False),
        sa.Column("daemon_host", sa.String(255), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("account", name="pk_schedules"),
        sa.CheckConstraint("consecutive_failures >= 0", name="ck_schedules_consecutive_failures"),
    )


def downgrade() -> None:
    """Drop every table (and every record in them)."""
    op.drop_table("schedules")
    op.drop_table("failures")
    op.drop_index("ix_runs_account", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_messages_account_state", table_name="messages")
    op.drop_table("messages")
