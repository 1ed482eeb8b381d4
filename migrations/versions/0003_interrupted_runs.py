"""Runs may end as ``interrupted``: a run whose process died before it recorded an outcome.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

A run killed by SIGKILL (or SIGTERM outside the daemon, or a power cut) never
reaches ``finish_run`` and stayed ``running`` for ever. The next run of the
account holds the account's lock, so any earlier ``running`` row of that
account is such a run, and ``popvault status`` can tell too when it finds the
account's lock free; both now record it as ``interrupted``. Only the CHECK
constraint on ``runs.outcome`` changes (and gets the name the models give it,
``ck_runs_outcome``: 0001's was prefixed twice by the naming convention).

Downgrade turns ``interrupted`` runs into ``failed`` ones (0002 has no such
outcome), keeping their error text.

Migrations are frozen: they spell out their types instead of importing the
models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES_0002 = ("running", "ok", "failed")
_OUTCOMES_0003 = (*_OUTCOMES_0002, "interrupted")
# 0001 named the constraint "ck_runs_outcome" and the naming convention prefixed it
# once more; the new constraint gets the name the models give it.
_NAME_0002 = "ck_runs_ck_runs_outcome"
_NAME_0003 = "ck_runs_outcome"


def _outcome_check(outcomes: tuple[str, ...]) -> str:
    return "outcome IN (" + ", ".join(f"'{outcome}'" for outcome in outcomes) + ")"


def _runs_batch() -> Any:
    """``batch_alter_table("runs")``, restating the byte-wise account column.

    SQLite rebuilds the table from its reflection, which loses a column's
    COLLATE; PostgreSQL alters in place.
    """
    account = sa.Column(
        "account",
        sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql"),
        nullable=False,
    )
    return op.batch_alter_table("runs", reflect_args=[account])


def _replace_check(old_name: str, new_name: str, outcomes: tuple[str, ...]) -> None:
    with _runs_batch() as batch:
        batch.drop_constraint(op.f(old_name), type_="check")
        batch.create_check_constraint(op.f(new_name), _outcome_check(outcomes))


def upgrade() -> None:
    """Allow the outcome ``interrupted``."""
    _replace_check(_NAME_0002, _NAME_0003, _OUTCOMES_0003)


def downgrade() -> None:
    """Interrupted runs become failed ones; the outcome ``interrupted`` is no longer allowed."""
    op.execute(sa.text("UPDATE runs SET outcome = 'failed' WHERE outcome = 'interrupted'"))
    _replace_check(_NAME_0003, _NAME_0002, _OUTCOMES_0002)
