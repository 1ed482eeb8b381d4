"""Messages are keyed by (account, uidl, occurrence); holds on server copies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Why occurrence: RFC 1939 section 7 makes a UIDL unique within a maildrop,
but servers that derive UIDLs from the content (mbox servers do) list two
byte-identical messages under the same UIDL. popvault must archive every
listed message exactly once, so (account, uidl) can no longer name a
message. A message is now (account, uidl, occurrence): occurrence 1 is the
first message recorded under a UIDL, 2 the second, and so on; the
orchestrator matches each session's listing to the rows (by size, then
order, and by SHA-256 of the content when in doubt). Every existing row is
occurrence 1: 0001 allowed only one message per UIDL. ``failures`` gets the
same key.

Why holds: a hold (``hold_reason``, ``held_at``) keeps retention from
deleting a server copy until the user releases it, e.g. when the octets
received (``received_size``, line ends counted as CRLF) differ from the
server's LIST size: a server that substituted a message. An older popvault
may already have archived such a substitute, so the upgrade holds every
archived, not deleted row whose stored size exceeds the server's LIST size
by more than the 2 octets a missing final line end explains (a Maildir file
stores LF line ends, so it is never larger than the CRLF count otherwise).

Downgrade refuses while any message has an occurrence above 1 (0001 cannot
record it, and dropping it would forget an archived file); failures of such
occurrences are dropped (a retry count, nothing more). Holds are dropped:
the older popvault will not know them.

Migrations are frozen: they spell out their types instead of importing the
models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A stored copy may be 2 octets larger than the LIST size and still be the
# same message: LIST counts CRLF line ends (RFC 1939 section 5), and a
# message without a final line end is stored with one added.
_FINAL_LINE_END = 2

# Built in SQL so that one UPDATE covers every row; CAST(... AS TEXT) and ||
# mean the same on SQLite and PostgreSQL.
_HOLD_EARLIER_SUBSTITUTES = sa.text(
    "UPDATE messages SET "
    "hold_reason = 'archived by an earlier popvault: the stored copy has ' "
    "|| CAST(size AS TEXT) || ' octets but the server listed ' "
    "|| CAST(server_size AS TEXT), "
    "held_at = :now "
    "WHERE state = 'archived' AND deleted_at IS NULL AND hold_reason IS NULL "
    "AND server_size IS NOT NULL AND size > server_size + :slack"
).bindparams(sa.bindparam("now", type_=sa.DateTime(timezone=True)))


def _binary_string() -> sa.types.TypeEngine[str]:
    # UIDLs are case-sensitive (RFC 1939 section 7): byte-wise collation.
    return sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _keyed_batch(table: str) -> Any:
    """``batch_alter_table`` for a table with account and uidl columns.

    SQLite rebuilds the table from its reflection, which loses a column's
    COLLATE: restate the two byte-wise columns so the rebuilt table keeps
    comparing UIDLs byte for byte. PostgreSQL alters in place.
    """
    columns = [
        sa.Column("account", _binary_string(), nullable=False),
        sa.Column("uidl", _binary_string(), nullable=False),
    ]
    return op.batch_alter_table(table, reflect_args=columns)


def _now_for(bind: sa.Connection) -> datetime:
    """Now in UTC as the ledger stores it: naive on SQLite, which has no zones."""
    now = datetime.now(UTC)
    return now.replace(tzinfo=None) if bind.dialect.name == "sqlite" else now


def upgrade() -> None:
    """Add occurrence to messages and failures, the hold columns, and holds due."""
    with _keyed_batch("messages") as batch:
        batch.add_column(sa.Column("occurrence", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("received_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("hold_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("held_at", _utc(), nullable=True))
        batch.drop_constraint(op.f("uq_messages_account_uidl"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_messages_account_uidl_occurrence"), ["account", "uidl", "occurrence"]
        )
        batch.create_check_constraint(op.f("ck_messages_occurrence"), "occurrence >= 1")
        batch.create_check_constraint(op.f("ck_messages_received_size"), "received_size >= 0")
        batch.create_check_constraint(
            op.f("ck_messages_held_at"), "hold_reason IS NULL OR held_at IS NOT NULL"
        )
    with _keyed_batch("failures") as batch:
        batch.add_column(sa.Column("occurrence", sa.Integer(), server_default="1", nullable=False))
        batch.drop_constraint(op.f("uq_failures_account_uidl"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_failures_account_uidl_occurrence"), ["account", "uidl", "occurrence"]
        )
        batch.create_check_constraint(op.f("ck_failures_occurrence"), "occurrence >= 1")
    bind = op.get_bind()
    bind.execute(_HOLD_EARLIER_SUBSTITUTES, {"now": _now_for(bind), "slack": _FINAL_LINE_END})


def downgrade() -> None:
    """Back to one message per (account, uidl); refuses if that would forget one."""
    bind = op.get_bind()
    shared = bind.execute(sa.text("SELECT count(*) FROM messages WHERE occurrence > 1")).scalar()
    if shared:
        raise CommandError(
            f"cannot downgrade the ledger to 0001: {shared} message(s) share a UIDL with "
            "another (occurrence > 1), which 0001 cannot record"
        )
    bind.execute(sa.text("DELETE FROM failures WHERE occurrence > 1"))
    with _keyed_batch("failures") as batch:
        batch.drop_constraint(op.f("ck_failures_occurrence"), type_="check")
        batch.drop_constraint(op.f("uq_failures_account_uidl_occurrence"), type_="unique")
        batch.create_unique_constraint(op.f("uq_failures_account_uidl"), ["account", "uidl"])
        batch.drop_column("occurrence")
    with _keyed_batch("messages") as batch:
        batch.drop_constraint(op.f("ck_messages_held_at"), type_="check")
        batch.drop_constraint(op.f("ck_messages_received_size"), type_="check")
        batch.drop_constraint(op.f("ck_messages_occurrence"), type_="check")
        batch.drop_constraint(op.f("uq_messages_account_uidl_occurrence"), type_="unique")
        batch.create_unique_constraint(op.f("uq_messages_account_uidl"), ["account", "uidl"])
        batch.drop_column("held_at")
        batch.drop_column("hold_reason")
        batch.drop_column("received_size")
        batch.drop_column("occurrence")
