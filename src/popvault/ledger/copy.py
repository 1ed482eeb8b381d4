"""Copying a ledger to another database: ``popvault db copy --to URL``.

SQLite to PostgreSQL, back, or between two databases of one kind, without
losing a row. The steps, each a reason to refuse before anything is written:

1. The source must be at the head revision: a copy never changes its source,
   so an older one is refused with the command to run (``popvault db upgrade``).
2. Nothing may be writing to the source. A SQLite source's daemon lock is
   taken and held for the whole copy (a running daemon refuses the copy, and
   none can start during it); a run still in progress (a ``running`` row whose
   account lock is held) refuses it; on PostgreSQL, where daemons hold no
   ledger-wide lock, schedule rows a daemon refreshed in the last
   :data:`DAEMON_FRESH` refuse it too.
3. The target is created at head (:func:`~popvault.ledger.migrate.create_fresh`)
   or upgraded; one whose schema is newer is refused untouched. A target
   whose popvault tables hold any row is refused unless ``force``, before any
   change, upgrade included. The target's id row (``ledger_identity``, made
   with every ledger) does not count: the copy replaces it with the source's,
   since the copy is the same ledger, of the same archive files (whose
   marker, popvault.store.marker, names that id).

Then the source is frozen — SQLite: ``BEGIN IMMEDIATE`` holds its write lock;
PostgreSQL: a REPEATABLE READ snapshot taken after ``LOCK TABLE ... IN SHARE
MODE``, which lets readers (``popvault status``) in and keeps writers out —
and every table is copied in foreign-key order (the models' metadata, so a
table added by a later migration is copied too) in batches of
:data:`BATCH_ROWS`, read through a server-side cursor, so memory stays flat
whatever the size. The target takes the whole copy in one transaction: more
than the one transaction per table the copy needs, it means a copy that fails
or is interrupted leaves the target exactly as it was (``force``'s emptying
included). PostgreSQL sequences are set past the copied ids.

At the end each table is read again on both sides in primary-key order, and
its row count and a SHA-256 over the rows normalised in Python
(:func:`row_bytes`: timestamps as UTC ISO text, booleans as 0/1, NULL apart
from every value) are compared: the same on both backends by construction,
where a database's own hash would not be. Any difference fails the copy,
names the table and the first row that differs, and leaves the target as it
is. The archive files are not touched: the ledger names them relative to the
archive root.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Integer,
    Row,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy import inspect as sa_inspect

from popvault.errors import LedgerError, SchemaMismatch
from popvault.ledger.engine import (
    WRITE_INTENT,
    create_ledger_engine,
    parse_url,
    redact,
    sqlite_file,
    translate_errors,
)
from popvault.ledger.facade import Ledger
from popvault.ledger.migrate import UPGRADE_COMMAND, check_engine, upgrade_engine
from popvault.ledger.models import Lease, LedgerIdentity, metadata

log = logging.getLogger("popvault.ledger")

# Rows per batch, read and written: a few MB of Python objects for the widest
# table (messages: 18 columns), and insertmanyvalues sends 1,000 rows per
# INSERT on PostgreSQL, so 5,000 is five statements per batch.
BATCH_ROWS: Final = 5_000
# A daemon refreshes its schedule rows every 60 s (daemon.main.HEARTBEAT_S);
# `status` calls a row stale after 10 minutes. A row fresher than that is a
# daemon that may still be writing to the source.
DAEMON_FRESH: Final = timedelta(minutes=10)
# How long the copy waits for a table lock (the source's SHARE lock behind a
# writer's open transaction, the target's EXCLUSIVE one): a run's transactions
# last milliseconds, so a longer wait is a session left idle in a transaction.
LOCK_TIMEOUT_S: Final = 30
# How often progress is logged while a large table is copied.
_LOG_EVERY_ROWS: Final = 200_000
# The ledger's id row: every ledger has one from its creation, so it never makes a
# target "not empty", and the copy always replaces the target's with the source's
# (the copy is the same ledger, of the same archive files: its marker must still match).
_IDENTITY: Final = LedgerIdentity.__table__.name

# What `before_verify` is given: the target's URL (for tests that alter the
# copy between the copy and its verification, to see the verification fail).
VerifyHook = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TableCopy:
    """One table as copied and verified: rows on both sides and their checksum."""

    name: str
    rows: int
    sha256: str
    # Rows the target's table held before the copy and `force` removed.
    emptied: int = 0


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What :func:`copy_ledger` did; the URLs have their passwords masked."""

    source: str
    target: str
    tables: tuple[TableCopy, ...]
    forced: bool
    # Runs without an outcome whose process is gone: copied as they are, the
    # account's next run on the target marks them interrupted.
    stale_runs: int
    seconds: float

    @property
    def rows(self) -> int:
        """Rows copied, every table together."""
        return sum(table.rows for table in self.tables)


def copy_ledger(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    batch_rows: int = BATCH_ROWS,
    before_verify: VerifyHook | None = None,
    now: datetime | None = None,
) -> CopyResult:
    """Copy every row of the ledger at ``source_url`` into ``target_url`` and verify it.

    ``force`` empties the target's popvault tables first (in the copy's one
    transaction); without it a target holding any row is refused. Raises
    :class:`SchemaMismatch` for a source not at head or a target newer than
    this popvault, :class:`LedgerError` for every other refusal and for a
    verification that fails (the target is then left as it is), and
    :class:`DatabaseUnavailable` when either database cannot be reached.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    source_parsed, target_parsed = parse_url(source_url), parse_url(target_url)
    _refuse_same(source_parsed, target_parsed)
    _require_source_file(source_parsed)
    started = time.monotonic()
    with ExitStack() as stack:
        source = stack.enter_context(_source_ledger(source_url))
        stale = _refuse_writers(source, stack, now or datetime.now(UTC))
        target = create_ledger_engine(target_parsed)
        stack.callback(target.dispose)
        _prepare_target(target, force=force)
        with _frozen(source._engine) as frozen:
            _refuse_same_server(frozen, target)
            emptied = _copy_all(frozen, target, force=force, batch_rows=batch_rows)
            if before_verify is not None:
                before_verify(target_url)
            tables = _verify_all(frozen, target, emptied, batch_rows=batch_rows)
            _refuse_waiting_writers(frozen)
    return CopyResult(
        source=redact(source_parsed),
        target=redact(target_parsed),
        tables=tables,
        forced=force,
        stale_runs=stale,
        seconds=time.monotonic() - started,
    )


def report_lines(result: CopyResult) -> list[str]:
    """What ``popvault db copy`` prints about a copy that succeeded."""
    lines = [f"copied the ledger {result.source} to {result.target}"]
    if result.forced:
        removed = ", ".join(f"{table.name} {table.emptied}" for table in result.tables)
        lines.append(
            f"--force: emptied the target's popvault tables first (rows removed: {removed})"
        )
    for table in result.tables:
        lines.append(
            f"  {table.name}: {table.rows} row(s), sha256 {table.sha256[:16]}: "
            "source and target agree"
        )
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    lines.append(f"{result.rows} row(s) in {result.seconds:.1f} s ({rate:,.0f} rows/s), verified")
    if result.stale_runs:
        lines.append(
            f"{result.stale_runs} run(s) whose process died before recording an outcome were "
            "copied as they are; the next run of their account marks them interrupted"
        )
    lines.append(
        "the archive files did not move: the ledger names them relative to [archive] root. "
        "Point [ledger] url at the target (keeping [archive] root) before starting popvault again"
    )
    return lines


# -- refusals before anything is written ---------------------------------------------


def _refuse_same(source: URL, target: URL) -> None:
    same = redact(source) == redact(target)
    source_file, target_file = sqlite_file(source), sqlite_file(target)
    if source_file is not None and target_file is not None and target_file.exists():
        same = same or os.path.samefile(source_file, target_file)
    if same:
        raise LedgerError(f"the copy's target {redact(target)} is its source: nothing to copy")


def _require_source_file(source: URL) -> None:
    """A SQLite source must exist: opening a missing file would create an empty ledger."""
    path = sqlite_file(source)
    if path is not None and not Path(path).exists():
        raise LedgerError(f"the source ledger {path} does not exist")


@contextmanager
def _source_ledger(url: str) -> Iterator[Ledger]:
    try:
        ledger = Ledger.open(url, upgrade=False)
    except SchemaMismatch as exc:
        raise SchemaMismatch(
            f"the copy's source: {exc}; a copy never changes its source, so bring it to the "
            f"current schema first (`{UPGRADE_COMMAND}` with [ledger] url set to it)"
        ) from None
    with ledger:
        yield ledger


def _refuse_writers(source: Ledger, stack: ExitStack, now: datetime) -> int:
    """Refuse while anything may write to the source; returns the stale runs' count.

    The SQLite daemon lock stays held (in ``stack``) until the copy ends.
    """
    stack.enter_context(source.daemon_lock())
    if source._engine.dialect.name == "postgresql":
        _refuse_live_daemons(source, now)
    _refuse_live_leases(source, now)
    if source._engine.dialect.name == "postgresql":
        # A live run holds a live lease, which was refused above: every run row
        # still "running" is a dead run's. (Probing with account_lock would claim
        # leases, writing to the source.)
        return len(source.running_accounts())
    stale = 0
    for account in source.running_accounts():
        try:
            with source.account_lock(account, wait=0.0):
                stale += 1
        except LedgerError as exc:  # AccountBusy
            raise LedgerError(
                f"a run of account {account!r} is in progress on the source ledger "
                f"{source.url} ({exc}); stop `popvault daemon` and every `popvault run` "
                "using it, then copy"
            ) from None
    return stale


def _refuse_live_daemons(source: Ledger, now: datetime) -> None:
    this_host = platform.node()
    for entry in source.schedules():
        if now - entry.updated_at > DAEMON_FRESH:
            continue
        if entry.daemon_host == this_host and not _pid_alive(entry.daemon_pid):
            continue
        raise LedgerError(
            f"a popvault daemon (pid {entry.daemon_pid} on {entry.daemon_host}) confirmed its "
            f"schedule for account {entry.account!r} at {entry.updated_at.isoformat()} on the "
            f"source ledger {source.url}: stop every daemon using it, then copy (a daemon that "
            f"died counts as stopped {DAEMON_FRESH.seconds // 60} minutes after its last "
            "confirmation)"
        )


def _refuse_live_leases(source: Ledger, now: datetime) -> None:
    """A live lease is a run that may still write to the source (issue 11's leases)."""
    leases = Lease.__table__
    live = select(leases.c.account, leases.c.owner_host, leases.c.owner_pid, leases.c.expires_at)
    with source._engine.connect() as connection:
        row = connection.execute(live.where(leases.c.expires_at > now).limit(1)).first()
    if row is not None:
        raise LedgerError(
            f"account {row.account!r} is leased to pid {row.owner_pid} on {row.owner_host} "
            f"until {row.expires_at.isoformat()} on the source ledger {source.url}: stop every "
            "daemon using it (or wait for the lease to expire), then copy"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _prepare_target(target: Engine, *, force: bool) -> None:
    """Refuse a non-empty target (unless ``force``) before changing it; then bring it to head."""
    existing = [name for name in _popvault_tables(target) if name != _IDENTITY]
    if existing and not force:
        counts = _row_counts(target, existing)
        if any(counts.values()):
            held = ", ".join(f"{name} {count}" for name, count in counts.items() if count)
            raise LedgerError(
                f"the copy's target {redact(target.url)} is not empty (rows: {held}); "
                "--force empties its popvault tables first, in the copy's transaction "
                "(other tables of the database are left alone)"
            )
    upgrade_engine(target)
    check_engine(target)


def _popvault_tables(engine: Engine) -> list[str]:
    with translate_errors(engine.url), engine.connect() as connection:
        present = set(sa_inspect(connection).get_table_names())
    return [table.name for table in metadata.sorted_tables if table.name in present]


def _row_counts(engine: Engine, names: Sequence[str]) -> dict[str, int]:
    with translate_errors(engine.url), engine.connect() as connection:
        return {name: _count(connection, metadata.tables[name]) for name in names}


def _count(connection: Connection, table: Table) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


# -- the source, frozen ------------------------------------------------------------


@contextmanager
def _frozen(engine: Engine) -> Iterator[Connection]:
    """A read transaction on the source that no writer can change while it lasts."""
    with translate_errors(engine.url), engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                # LOCK before any SELECT: the snapshot is taken by the first query,
                # so it sees every write committed before the lock was granted.
                _lock_timeout(connection)
                names = ", ".join(_quoted(connection, table) for table in metadata.sorted_tables)
                connection.execute(text(f"LOCK TABLE {names} IN SHARE MODE"))
                yield connection
        else:
            # BEGIN IMMEDIATE: the write lock; readers go on (WAL), writers wait.
            connection.execution_options(**{WRITE_INTENT: True})
            with connection.begin():
                yield connection


def _lock_timeout(connection: Connection) -> None:
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))


def _quoted(connection: Connection, table: Table) -> str:
    return connection.dialect.identifier_preparer.format_table(table)


def _refuse_same_server(frozen: Connection, target: Engine) -> None:
    """Refuse a PostgreSQL target that is the source's database under another URL.

    The source session is given a random application_name, looked for from
    the target. (Were it missed, the target's EXCLUSIVE lock would wait on
    the source's SHARE lock and time out: nothing would be written.)
    """
    if frozen.dialect.name != "postgresql" or target.dialect.name != "postgresql":
        return
    token = f"popvault copy {secrets.token_hex(8)}"
    frozen.execute(text("SELECT set_config('application_name', :t, false)"), {"t": token})
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = :t AND datname = current_database()"
    )
    with translate_errors(target.url), target.connect() as connection:
        seen = int(connection.execute(query, {"t": token}).scalar_one())
    if seen:
        raise LedgerError(
            f"the copy's target {redact(target.url)} is the source's own database: nothing to copy"
        )


def _refuse_waiting_writers(frozen: Connection) -> None:
    """PostgreSQL: fail if a session waited to write to the source during the copy.

    Its write lands after the snapshot, so the copy would miss it.
    """
    if frozen.dialect.name != "postgresql":
        return
    query = text(
        "SELECT l.pid, c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE NOT l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND c.relname = ANY(:names) ORDER BY l.pid LIMIT 1"
    )
    names = [table.name for table in metadata.sorted_tables]
    waiting = frozen.execute(query, {"names": names}).first()
    if waiting is not None:
        raise LedgerError(
            f"PostgreSQL session {waiting[0]} waited to write to the source's table "
            f"{waiting[1]} during the copy, which would miss that write: stop every popvault "
            "process using the source, then copy again (with --force if the target kept a copy)"
        )


# -- the copy --------------------------------------------------------------------


def _copy_all(
    frozen: Connection, target: Engine, *, force: bool, batch_rows: int
) -> dict[str, int]:
    """Every table into the target, in one transaction; returns the rows ``force`` removed."""
    tables = metadata.sorted_tables
    with translate_errors(target.url), target.connect() as connection:
        connection.execution_options(**{WRITE_INTENT: True})
        with connection.begin():
            _lock_target(connection, tables)
            emptied = _empty(connection, tables, force=force)
            for table in tables:
                _copy_table(frozen, connection, table, batch_rows)
            _advance_sequences(connection, tables)
            # Before the commit too: a writer seen now costs the target nothing.
            _refuse_waiting_writers(frozen)
    return emptied


def _lock_target(connection: Connection, tables: Sequence[Table]) -> None:
    # SQLite: BEGIN IMMEDIATE (WRITE_INTENT) already holds the whole file.
    if connection.dialect.name == "postgresql":
        _lock_timeout(connection)
        names = ", ".join(_quoted(connection, table) for table in tables)
        connection.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))


def _empty(connection: Connection, tables: Sequence[Table], *, force: bool) -> dict[str, int]:
    """Children before parents; without ``force``, check again (under the lock) that
    nothing came in since :func:`_prepare_target` looked. The target's own id row
    always goes (the source's replaces it), and is not counted as emptied."""
    emptied: dict[str, int] = {}
    for table in reversed(tables):
        if table.name == _IDENTITY:
            connection.execute(sql_delete(table))
        elif force:
            emptied[table.name] = int(connection.execute(sql_delete(table)).rowcount)
        elif _count(connection, table):
            raise LedgerError(
                f"the copy's target received rows in {table.name} while the copy began: "
                "is popvault using it? Nothing was copied"
            )
    return emptied


def _copy_table(frozen: Connection, target: Connection, table: Table, batch_rows: int) -> None:
    copied = 0
    next_log = _LOG_EVERY_ROWS
    with _sink(target, table) as write:
        for batch in _batches(frozen, table, batch_rows):
            write(batch)
            copied += len(batch)
            if copied >= next_log:
                log.info("db copy: %s: %d rows copied", table.name, copied)
                next_log += _LOG_EVERY_ROWS
    log.info("db copy: %s: %d rows copied, all of them", table.name, copied)


Sink = Callable[[Sequence[Row[Any]]], None]


def _sink(target: Connection, table: Table) -> AbstractContextManager[Sink]:
    """Where a table's batches go: one COPY on PostgreSQL, executemany INSERTs on SQLite."""
    if target.dialect.name == "postgresql":
        return _copy_into(target, table)
    return _inserts_into(target, table)


@contextmanager
def _inserts_into(target: Connection, table: Table) -> Iterator[Sink]:
    keys = [column.key for column in table.columns]

    def write(batch: Sequence[Row[Any]]) -> None:
        target.execute(insert(table), [dict(zip(keys, row, strict=True)) for row in batch])

    yield write


@contextmanager
def _copy_into(target: Connection, table: Table) -> Iterator[Sink]:
    """``COPY table FROM STDIN`` inside the target's transaction, fed batch by batch.

    Several times the rows per second of executemany INSERTs. Values pass the
    columns' own bind processing first (UTCDateTime: an aware UTC datetime),
    as an INSERT would bind them.
    """
    import psycopg  # noqa: PLC0415 - PostgreSQL only: a SQLite copy need not load it

    raw = target.connection.dbapi_connection
    if not isinstance(raw, psycopg.Connection):  # pragma: no cover - parse_url picks psycopg
        raise LedgerError(f"PostgreSQL copy needs psycopg 3, got {type(raw).__name__}")
    processors = [column.type.bind_processor(target.dialect) for column in table.columns]
    quote = target.dialect.identifier_preparer.quote
    columns = ", ".join(quote(column.name) for column in table.columns)
    statement = f"COPY {_quoted(target, table)} ({columns}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:

        def write(batch: Sequence[Row[Any]]) -> None:
            for row in batch:
                copy.write_row(
                    [v if p is None else p(v) for p, v in zip(processors, row, strict=True)]
                )

        yield write


def _batches(connection: Connection, table: Table, batch_rows: int) -> Iterator[Sequence[Row[Any]]]:
    """The table's rows in primary-key order, ``batch_rows`` at a time.

    ``yield_per`` streams: psycopg through a server-side (named) cursor, SQLite
    by stepping its cursor, so only one batch is ever in memory.
    """
    query = (
        select(table).order_by(*table.primary_key.columns).execution_options(yield_per=batch_rows)
    )
    result = connection.execute(query)
    try:
        yield from result.partitions()
    finally:
        result.close()


def _advance_sequences(connection: Connection, tables: Sequence[Table]) -> None:
    """PostgreSQL: each serial/identity key's next value past the copied ids.

    SQLite needs nothing: its INTEGER PRIMARY KEY (no AUTOINCREMENT in the
    models) takes max(rowid) + 1.
    """
    if connection.dialect.name != "postgresql":
        return
    for table in tables:
        column = _serial_key(table)
        if column is None:
            continue
        quoted = connection.dialect.identifier_preparer.quote(column)
        statement = text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column), "  # noqa: S608 - names from the models
            f"COALESCE(MAX({quoted}), 0) + 1, false) FROM {_quoted(connection, table)}"
        )
        connection.execute(statement, {"table": _quoted(connection, table), "column": column})


def _serial_key(table: Table) -> str | None:
    keys = list(table.primary_key.columns)
    if len(keys) != 1 or not isinstance(keys[0].type, Integer):
        return None
    return keys[0].name if keys[0].autoincrement in (True, "auto") else None


# -- the verification ------------------------------------------------------------


def row_bytes(row: Sequence[Any]) -> bytes:
    """One row as bytes that are the same for the same values on every backend.

    The ``repr`` of the row's values as plain Python values: a text is quoted
    and escaped, so no two rows share a form (NULL is not "", 1 is not "1",
    ("a", "bc") is not ("ab", "c")). Timestamps become UTC ISO text (tagged
    "T"; a naive one is written as it is, tagged "t"), booleans 0/1 (tagged
    "B", apart from integers), Decimals normalised.
    """
    return repr([_plain(value) for value in row]).encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    if value is None:
        return None  # the common case in the timestamp columns
    if isinstance(value, datetime):
        return _plain_datetime(value)
    if isinstance(value, bool):
        return ("B", int(value))
    if isinstance(value, Decimal):
        return ("D", str(value.normalize()))
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return value  # None, int, str, float, bytes: their repr is exact


def _plain_datetime(value: datetime) -> tuple[str, str]:
    if value.tzinfo is None or value.utcoffset() is None:
        return ("t", value.isoformat())
    return ("T", value.astimezone(UTC).isoformat())


def _row_encoder(table: Table) -> Callable[[Sequence[Any]], bytes]:
    """:func:`row_bytes` for the table's rows, faster: only the columns whose values
    need it (timestamps, booleans, ...) pass :func:`_plain`; integers and texts are
    their own plain form."""
    special = [i for i, column in enumerate(table.columns) if not _plain_column(column.type)]

    def encode(row: Sequence[Any]) -> bytes:
        values = list(row)
        for i in special:
            values[i] = _plain(values[i])
        return repr(values).encode("utf-8", "surrogatepass")

    return encode


def _plain_column(column_type: Any) -> bool:
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return False
    return python_type in (int, str)


@dataclass
class _Side:
    """One side of a table's verification: rows seen and their running SHA-256."""

    rows: int = 0
    digest: Any = None

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256()

    def add(self, encoded: bytes) -> None:
        self.rows += 1
        self.digest.update(encoded)

    def hexdigest(self) -> str:
        return str(self.digest.hexdigest())


def _verify_all(
    frozen: Connection, target: Engine, emptied: dict[str, int], *, batch_rows: int
) -> tuple[TableCopy, ...]:
    with translate_errors(target.url), target.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            return tuple(
                _verify_table(frozen, connection, table, emptied.get(table.name, 0), batch_rows)
                for table in metadata.sorted_tables
            )


def _verify_table(
    frozen: Connection, target: Connection, table: Table, emptied: int, batch_rows: int
) -> TableCopy:
    """Both sides' rows in key order, side by side: counts, checksums, the first difference."""
    source_side, target_side = _Side(), _Side()
    first_difference: str | None = None
    key_positions = [list(table.columns).index(column) for column in table.primary_key.columns]
    encode = _row_encoder(table)
    source_rows = _rows(frozen, table, batch_rows)
    target_rows = _rows(target, table, batch_rows)
    for source_row, target_row in _zip_longest(source_rows, target_rows):
        source_bytes = None if source_row is None else encode(source_row)
        target_bytes = None if target_row is None else encode(target_row)
        if source_bytes is not None:
            source_side.add(source_bytes)
        if target_bytes is not None:
            target_side.add(target_bytes)
        if first_difference is None and source_bytes != target_bytes:
            row = source_row if source_row is not None else target_row
            assert row is not None  # noqa: S101 - one side always has a row here
            first_difference = ", ".join(
                f"{table.columns[i].name}={row[i]!r}" for i in key_positions
            )
    if first_difference is not None or source_side.hexdigest() != target_side.hexdigest():
        raise LedgerError(
            f"the copy's verification failed for table {table.name}: the source has "
            f"{source_side.rows} row(s), sha256 {source_side.hexdigest()[:16]}; the target has "
            f"{target_side.rows}, sha256 {target_side.hexdigest()[:16]}; first difference at "
            f"{first_difference}. The target was left as it is: do not use it; find out what "
            "changed it, then copy again with --force"
        )
    return TableCopy(table.name, source_side.rows, source_side.hexdigest(), emptied)


def _rows(connection: Connection, table: Table, batch_rows: int) -> Iterator[Row[Any]]:
    for batch in _batches(connection, table, batch_rows):
        yield from batch


def _zip_longest(
    left: Iterator[Row[Any]], right: Iterator[Row[Any]]
) -> Iterator[tuple[Row[Any] | None, Row[Any] | None]]:
    while True:
        a, b = next(left, None), next(right, None)
        if a is None and b is None:
            return
        yield a, b


__all__ = [
    "BATCH_ROWS",
    "CopyResult",
    "TableCopy",
    "copy_ledger",
    "report_lines",
    "row_bytes",
]
