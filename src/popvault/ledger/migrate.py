"""Schema migrations: Alembic configured in code, no alembic.ini at runtime.

``upgrade`` brings a ledger to the newest schema this popvault knows, inside
one transaction guarded against a concurrent upgrade (SQLite: BEGIN IMMEDIATE;
PostgreSQL: an advisory lock). A SQLite file that already has a schema is
copied next to itself first. ``check`` refuses a ledger that is behind (and
names the command to run) or ahead (a newer popvault wrote it: it is never
touched).

Alembic (and Mako, which it loads) costs ~90 ms to import, a third of a no-op
``popvault run``: it is imported only when there is something to migrate or to
refuse. A ledger at :data:`HEAD_REVISION` needs nothing; a new one (none of the
ledger's tables exist yet) is created straight from the models' metadata and
stamped with :data:`HEAD_REVISION` (:func:`create_fresh`, which also writes
the ledger's id row, as migration 0006 does), which is the schema the
migrations build from nothing: tests/ledger/test_ledger_fresh_schema.py
compares the two on both backends.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    text,
)
from sqlalchemy import inspect as sa_inspect

from popvault.errors import LedgerError, SchemaMismatch
from popvault.ledger.engine import (
    BACKUP_INFIX,
    WRITE_INTENT,
    create_ledger_engine,
    parse_url,
    redact,
    sqlite_file,
    translate_errors,
)
from popvault.ledger.ledger_id import insert_identity
from popvault.ledger.models import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

UPGRADE_COMMAND = "popvault db upgrade"

# The newest revision of migrations/versions, known without importing Alembic:
# a ledger at it has nothing to migrate. tests/ledger/test_ledger_head.py checks
# it against the scripts, so a new migration cannot leave it stale.
HEAD_REVISION: Final = "0009"

# Alembic's version table (its default name; env.py does not change it).
_VERSION_TABLE: Final = "alembic_version"

# The version table as Alembic creates it (alembic.runtime.migration, 1.x:
# version_num VARCHAR(32), primary key "<table>_pkc"), so that a ledger
# created without Alembic is the one Alembic would have made. Its own
# MetaData: the models' naming convention would rename the key.
_VERSION = Table(
    _VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{_VERSION_TABLE}_pkc"),
)

# Every table a ledger has: if none exists, the ledger is new.
_LEDGER_TABLES: Final = frozenset({*metadata.tables, _VERSION_TABLE})

# pg_advisory_xact_lock key for schema upgrades: b"popvault" read as a
# big-endian int64, so that it cannot collide with small keys other apps pick.
_PG_UPGRADE_LOCK = int.from_bytes(b"popvault", "big")

_BACKUP_STAMP = "%Y%m%dT%H%M%SZ"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: installed package data, else the checkout.

    A wheel carries the top-level ``migrations/`` as ``popvault/migrations``;
    an editable install or a source checkout has it three folders above here.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "migrations", here.parents[2] / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise LedgerError("popvault is incomplete: its ledger migrations folder is missing")


def alembic_config(script_location: Path | None = None) -> Config:
    """An Alembic config built in code, pointing at our migrations."""
    # Imported here: only a ledger that is not at HEAD_REVISION pays for Alembic.
    from alembic.config import Config  # noqa: PLC0415

    config = Config()
    location = str(script_location or migrations_dir())
    # ConfigParser interpolation: a literal % in a path must be doubled.
    config.set_main_option("script_location", location.replace("%", "%%"))
    return config


def upgrade(url: str, *, script_location: Path | None = None) -> None:
    """Bring the ledger at ``url`` to the newest schema (creating it if empty)."""
    with _engine_for(url) as engine:
        upgrade_engine(engine, script_location=script_location)


def current(url: str) -> str | None:
    """The ledger's schema revision, or None if it has no schema yet."""
    with _engine_for(url) as engine, translate_errors(engine.url), engine.connect() as connection:
        return _current_revision(connection)


def check(url: str, *, script_location: Path | None = None) -> None:
    """Raise :class:`SchemaMismatch` unless the ledger's schema is current."""
    with _engine_for(url) as engine:
        check_engine(engine, script_location=script_location)


@contextmanager
def _engine_for(url: str) -> Iterator[Engine]:
    """A short-lived engine for one command, disposed of afterwards."""
    engine = create_ledger_engine(parse_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def check_engine(engine: Engine, *, script_location: Path | None = None) -> None:
    """:func:`check` on an engine the caller owns."""
    revision = _revision_of(engine)
    if script_location is None and revision == HEAD_REVISION:
        return  # the common case, without Alembic
    script = _script_directory(alembic_config(script_location))
    _require_known(script, revision, engine)
    head = script.get_current_head()
    if revision != head:
        found = revision or "no schema"
        raise SchemaMismatch(
            f"ledger database {redact(engine.url)} is at revision {found}, "
            f"this popvault needs {head}: run `{UPGRADE_COMMAND}`"
        )


def upgrade_engine(engine: Engine, *, script_location: Path | None = None) -> None:
    """:func:`upgrade` on an engine the caller owns."""
    if script_location is None:
        revision = _revision_of(engine)
        if revision == HEAD_REVISION:
            return  # the common case, without Alembic and without taking the write lock
        if revision is None and create_fresh(engine):
            return  # a new ledger, made without Alembic
    config = alembic_config(script_location)
    script = _script_directory(config)
    if _is_current(engine, script):
        return
    with translate_errors(engine.url), engine.connect() as connection:
        connection.execution_options(**{WRITE_INTENT: True})
        with connection.begin():
            _lock_for_upgrade(connection)
            revision = _current_revision(connection)
            _require_known(script, revision, engine)
            if revision == script.get_current_head():
                return
            _backup_before_upgrade(engine, revision)
            config.attributes["connection"] = connection
            _run_alembic_upgrade(config, engine)


def create_fresh(engine: Engine) -> bool:
    """Create a new ledger at :data:`HEAD_REVISION` from the models, without Alembic.

    Returns False, changing nothing, when the database already has any of the
    ledger's tables: then the migrations decide (an older schema to upgrade, a
    newer one to refuse). Tables of other applications sharing a PostgreSQL
    database do not count. Tables and version row are written in one
    transaction under the upgrade lock, so a concurrent creator (or upgrader)
    waits and then finds the ledger at head; on SQLite and PostgreSQL DDL is
    transactional, so a failure leaves the database empty.
    """
    with translate_errors(engine.url), engine.connect() as connection:
        connection.execution_options(**{WRITE_INTENT: True})
        with connection.begin():
            _lock_for_upgrade(connection)
            # Read again under the lock: another process may just have made it.
            existing = _LEDGER_TABLES.intersection(sa_inspect(connection).get_table_names())
            if existing:
                return _current_revision(connection) == HEAD_REVISION
            metadata.create_all(connection, checkfirst=False)
            insert_identity(connection)  # what migration 0006 writes
            _VERSION.create(connection, checkfirst=False)
            connection.execute(_VERSION.insert().values(version_num=HEAD_REVISION))
    return True


def _script_directory(config: Config) -> ScriptDirectory:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - see alembic_config

    return ScriptDirectory.from_config(config)


def _revision_of(engine: Engine) -> str | None:
    with translate_errors(engine.url), engine.connect() as connection:
        return _current_revision(connection)


def _is_current(engine: Engine, script: ScriptDirectory) -> bool:
    return _revision_of(engine) == script.get_current_head()


def _run_alembic_upgrade(config: Config, engine: Engine) -> None:
    from alembic import command  # noqa: PLC0415 - see alembic_config
    from alembic.util import CommandError  # noqa: PLC0415

    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise LedgerError(f"upgrading ledger database {redact(engine.url)} failed: {exc}") from exc


def _lock_for_upgrade(connection: Connection) -> None:
    # SQLite: BEGIN IMMEDIATE (WRITE_INTENT) already holds the write lock.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})


def _current_revision(connection: Connection) -> str | None:
    """The revision in Alembic's version table (None: no schema yet), read as Alembic
    reads it (``MigrationContext.get_current_heads``: the table, if there, then its rows)."""
    if not connection.dialect.has_table(connection, _VERSION_TABLE):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version"))
    heads = tuple(str(version) for (version,) in rows)
    if len(heads) > 1:
        raise SchemaMismatch(f"ledger schema has several revisions {heads}: repair it by hand")
    return heads[0] if heads else None


def _require_known(script: ScriptDirectory, revision: str | None, engine: Engine) -> None:
    known = {rev.revision for rev in script.walk_revisions()}
    if revision is not None and revision not in known:
        raise SchemaMismatch(
            f"ledger database {redact(engine.url)} is at revision {revision}, which this "
            "popvault does not know: a newer popvault wrote it; upgrade popvault "
            "(the ledger was left untouched)"
        )


def _backup_before_upgrade(engine: Engine, revision: str | None) -> None:
    path = sqlite_file(engine.url)
    if path is not None and revision is not None:
        backup_sqlite(path, revision)


def backup_sqlite(path: Path, from_revision: str, *, now: datetime | None = None) -> Path:
    """Copy a live SQLite ledger to ``<file>.bak-<rev>-<UTC stamp>`` and return it.

    Uses SQLite's online backup API, which gives a consistent copy even while
    another connection (here: the upgrading one) holds the write lock in WAL mode.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(_BACKUP_STAMP)
    target = _claim_backup_path(path, f"{path.name}{BACKUP_INFIX}{from_revision}-{stamp}")
    try:
        _copy_database(path, target)
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise LedgerError(f"backing up {path} before the upgrade failed: {exc}") from exc
    return target


def _claim_backup_path(path: Path, name: str) -> Path:
    """Create the backup file exclusively (0600), adding .1, .2... if taken."""
    for attempt in range(100):
        target = path.with_name(name if attempt == 0 else f"{name}.{attempt}")
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger backup {target}: {exc}") from exc
        return target
    raise LedgerError(f"too many ledger backups named {name}* next to {path}")


def _copy_database(source_path: Path, target: Path) -> None:
    source = sqlite3.connect(source_path)
    try:
        destination = sqlite3.connect(target)
        try:
            # The backup must be on disk before the original is changed.
            destination.execute("PRAGMA synchronous = FULL")
            source.backup(destination)
        finally:
            destination.close()
    finally:
        source.close()
