"""HEAD_REVISION, the head known without Alembic, stays the scripts' head."""

from __future__ import annotations

import json
import subprocess
import sys

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from popvault.ledger import Ledger, current
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import (
    HEAD_REVISION,
    _current_revision,
    alembic_config,
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


_OPEN = """
import json, sys
from popvault.ledger import Ledger, current
with Ledger.open(sys.argv[1]) as ledger:
    ledger.accounts()
print(json.dumps({"revision": current(sys.argv[1]), "alembic": "alembic" in sys.modules,
                  "mako": "mako" in sys.modules}))
"""


def _open_in_a_fresh_interpreter(url: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _OPEN, url], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_opening_a_new_ledger_does_not_import_alembic(ledger_url: str) -> None:
    # Issue 9: a new ledger is created from the models, not by the migrations.
    assert current(ledger_url) is None
    assert _open_in_a_fresh_interpreter(ledger_url) == {
        "revision": HEAD_REVISION,
        "alembic": False,
        "mako": False,
    }


def test_opening_a_ledger_behind_the_head_migrates_it_with_alembic(ledger_url: str) -> None:
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
    finally:
        engine.dispose()
    opened = _open_in_a_fresh_interpreter(ledger_url)
    assert opened["revision"] == HEAD_REVISION
    assert opened["alembic"] is True


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
