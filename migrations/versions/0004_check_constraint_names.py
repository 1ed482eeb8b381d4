"""CHECK constraints get the names the models give them (0001's were prefixed twice).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

0001 passed full names (``ck_messages_state``) to a metadata whose naming
convention prefixes a CHECK's name with ``ck_<table>_``, so the ledger got
``ck_messages_ck_messages_state`` and six more like it (0002 and 0003 named
theirs through ``op.f()`` and are right). A new ledger is now created straight
from the models (migrate.create_fresh, without Alembic), so a migrated ledger
must have exactly the models' schema: this renames the seven. The rule each
constraint enforces is unchanged.

PostgreSQL renames in place (``ALTER TABLE ... RENAME CONSTRAINT``: no table
rewrite, no re-validation). SQLite cannot rename a constraint, so each table is
rebuilt in batch mode (copy, drop, rename), restating the byte-wise columns,
whose COLLATE the reflection loses.

Downgrade gives back 0001's doubled names, which 0003 expects to find.

Migrations are frozen: they spell out their types and rules instead of
importing the models, which will move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> {short name: rule}, for every CHECK 0001 created. The doubled name
# is ck_<table>_ck_<table>_<short>, the right one ck_<table>_<short>.
_CHECKS: dict[str, dict[str, str]] = {
    "messages": {
        "state": "state IN ('pending', 'archived')",
        "size": "size >= 0",
        "sha256": "length(sha256) = 64",
        "archived_at": "state = 'pending' OR archived_at IS NOT NULL",
    },
    "runs": {"on_server": "on_server >= 0"},
    "failures": {"attempts": "attempts >= 1"},
    "schedules": {"consecutive_failures": "consecutive_failures >= 0"},
}

# The columns compared byte for byte (RFC 1939 section 7: UIDLs are
# case-sensitive), restated for SQLite's rebuild; schedules.account is its key.
_BYTEWISE: dict[str, tuple[str, ...]] = {
    "messages": ("account", "uidl"),
    "runs": ("account",),
    "failures": ("account", "uidl"),
    "schedules": ("account",),
}


def _right(table: str, short: str) -> str:
    return f"ck_{table}_{short}"


def _doubled(table: str, short: str) -> str:
    return f"ck_{table}_{_right(table, short)}"


def _restated(table: str) -> list[sa.SchemaItem]:
    """What SQLite's reflection gets wrong, for ``batch_alter_table(reflect_args=...)``.

    It loses a column's COLLATE, so the byte-wise columns are restated; and a
    restated key column takes the table's key with it, whose name must then be
    restated too (schedules.account is its table's primary key).
    """
    binary = sa.String(collation="BINARY").with_variant(sa.String(collation="C"), "postgresql")
    key = table == "schedules"
    items: list[sa.SchemaItem] = [
        sa.Column(name, binary, nullable=False, primary_key=key) for name in _BYTEWISE[table]
    ]
    if key:
        items.append(sa.PrimaryKeyConstraint(*_BYTEWISE[table], name=op.f(f"pk_{table}")))
    return items


def _rename_all(*, to_right: bool) -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    for table, checks in _CHECKS.items():
        pairs = [
            (_doubled(table, short), _right(table, short), rule) for short, rule in checks.items()
        ]
        if not to_right:
            pairs = [(new, old, rule) for old, new, rule in pairs]
        if sqlite:
            _rebuild_sqlite(table, pairs)
        else:
            for old, new, _rule in pairs:
                op.execute(sa.text(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}"))


def _rebuild_sqlite(table: str, pairs: list[tuple[str, str, str]]) -> None:
    """One batch rebuild of ``table``: each CHECK dropped and added under its new name."""
    with op.batch_alter_table(table, reflect_args=_restated(table)) as batch:
        for old, new, rule in pairs:
            # op.f(): the name as given, not run through the naming convention again.
            batch.drop_constraint(op.f(old), type_="check")
            batch.create_check_constraint(op.f(new), rule)


def upgrade() -> None:
    """Rename 0001's doubly prefixed CHECK constraints to the models' names."""
    _rename_all(to_right=True)


def downgrade() -> None:
    """Give the CHECK constraints back their 0001 (doubly prefixed) names."""
    _rename_all(to_right=False)
