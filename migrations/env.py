"""Alembic environment for the popvault ledger.

At runtime popvault passes an open connection, already inside the upgrade
transaction, as ``config.attributes["connection"]``. Authors may also run the
plain ``alembic`` CLI from the repository root (see alembic.ini): the URL then
comes from ``POPVAULT_LEDGER_URL`` or ``sqlalchemy.url``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.models import compared_by_autogenerate, metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        # Our engine emits BEGIN itself on SQLite, so DDL is transactional too.
        transactional_ddl=True,
        compare_type=True,
        include_name=compared_by_autogenerate,
    )


def _author_url() -> str:
    url = os.environ.get("POPVAULT_LEDGER_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set POPVAULT_LEDGER_URL (or sqlalchemy.url) to the ledger URL")
    return url


def run_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``) instead of running it."""
    context.configure(
        url=parse_url(_author_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against the passed connection, or one opened from the author's URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_ledger_engine(parse_url(_author_url()))
    try:
        with engine.begin() as own:
            _configure(own)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
