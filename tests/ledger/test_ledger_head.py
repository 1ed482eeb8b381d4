"""HEAD_REVISION, the head known without Alembic, stays the scripts' head."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from popvault.ledger import Ledger
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import (
    HEAD_REVISION,
    _current_revision,
    alembic_config,
    current,
    upgrade,
)


def test_head_revision_is_the_head_of_the_migration_scripts() -> None:
    # A new migration must move HEAD_REVISION, or `run` would skip the upgrade.
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD_REVISION]


def test_a_new_ledger_is_at_head_revision(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    upgrade(url)
    assert current(url) == HEAD_REVISION
    with Ledger.open(url, upgrade=False):
        pass


def test_the_revision_is_read_as_alembic_reads_it(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    engine = create_ledger_engine(parse_url(url))
    try:
        with engine.connect() as connection:
            assert _current_revision(connection) is None  # no version table at all
            assert MigrationContext.configure(connection).get_current_heads() == ()
        upgrade(url)
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
            assert (_current_revision(connection),) == heads
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))
        with engine.connect() as connection:
            assert _current_revision(connection) is None  # the table, empty
    finally:
        engine.dispose()
