"""What every concern of the Ledger shares: its state, connection blocks and checks.

:class:`LedgerCore` is the base of the per-concern mixins that
:class:`~popvault.ledger.facade.Ledger` is made of; it holds the engine and
opens the read and write blocks each method runs in. The module functions
check arguments and build bounded IN conditions for any table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Engine,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    false,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from popvault.errors import LedgerError
from popvault.ledger.engine import WRITE_INTENT, redact, translate_errors
from popvault.ledger.locks import LocalLocks
from popvault.ledger.records import KeyLike, MessageKey

# A message key as the ledger's internals handle it: (uidl, occurrence).
# Plain tuples, because a 100k-message listing would otherwise build 100k
# MessageKey objects just to compare them.
Pair: TypeAlias = tuple[str, int]

# Up to this many UIDLs are looked up with one `uidl IN (...)`; past it, one
# query reads every UIDL of the account and the difference is taken in
# Python. 500 stays far below SQLite's bound-parameter limit (999 before
# SQLite 3.32) and keeps the IN list cheap to plan on PostgreSQL.
IN_LIST_LIMIT = 500


class LedgerCore:
    """The state and the connection blocks shared by every part of the Ledger."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine made by :func:`create_ledger_engine`; prefer :meth:`open`."""
        self._engine = engine
        self._closed = False
        self._local_locks = LocalLocks()
        self._daemon_locks = LocalLocks()
        # When this Ledger last pruned each account's runs (RunsMixin.prune_runs_now).
        self._runs_pruned_at: dict[str, datetime] = {}

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return redact(self._engine.url)

    def _require_open(self) -> None:
        if self._closed:
            raise LedgerError(f"the ledger {self.url} is closed")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        self._require_open()
        with translate_errors(self._engine.url), self._engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One transaction, committed (durably) when the block ends cleanly."""
        self._require_open()
        with translate_errors(self._engine.url), self._engine.connect() as connection:
            connection.execution_options(**{WRITE_INTENT: True})
            with connection.begin():
                yield connection


def require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")


def require_reason(reason: str) -> None:
    """A hold's reason is what the user reads to decide on it: it must say something."""
    if not reason.strip():
        raise ValueError("a hold needs a reason the user can read, got an empty one")


def undecoded(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` as the driver returns it: no SQLAlchemy result processing per row."""
    return type_coerce(column, NullType()).label(column.key)


def decoded_columns(
    rows: Sequence[Sequence[Any]], columns: Sequence[ColumnElement[Any]], dialect: Dialect
) -> list[Iterable[Any]]:
    """The rows of a query of ``undecoded`` ``columns``, as columns of decoded values.

    Each column goes through its own type's result processing (the same
    functions a plain execute would call: UTCDateTime's, Boolean's), but once
    per distinct value, not once per row: archived_at takes one value per
    group commit and a flag two, so 20k rows cost a few hundred decodings
    instead of 60k (SQLAlchemy's per-row processing was ~40% of a 100k-row
    mailbox diff). For the queries that read a row per message of a mailbox.
    """
    values: list[Iterable[Any]] = list(zip(*rows, strict=True)) or [() for _ in columns]
    for index, column in enumerate(columns):
        # coltype None: none of these types' processors reads the driver's type code.
        process = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if process is not None:
            raw = values[index]
            decoded = {value: process(value) for value in set(raw)}
            values[index] = map(decoded.__getitem__, raw)
    return values


def upsert_insert(connection: Connection, table: Any) -> Any:
    """An ``INSERT`` into ``table`` in the connection's dialect: one that has ON CONFLICT.

    (``on_conflict_do_update`` / ``on_conflict_do_nothing``: both dialects
    spell them alike.) Each dialect's insert is imported here, where used: a
    SQLite ledger's run need not load the PostgreSQL dialect (~25 ms;
    tests/test_import_run_path.py), nor the other way round.
    """
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as make  # noqa: PLC0415
    else:
        from sqlalchemy.dialects.sqlite import insert as make  # type: ignore[assignment]  # noqa: PLC0415
    return make(table)


def among(
    column: ColumnElement[Any], values: Sequence[Any], connection: Connection
) -> ColumnElement[bool]:
    """``column IN values`` as one statement with a bounded number of parameters.

    Small lists are a plain IN. Past IN_LIST_LIMIT the whole list travels
    as one parameter (a PostgreSQL array; a JSON array read by SQLite's
    json_each), so a 100k-message mailbox costs one statement, not one per
    chunk, and stays far below the drivers' parameter limits (PostgreSQL's
    protocol allows 65535).
    """
    if len(values) <= IN_LIST_LIMIT:
        return column.in_(values)
    if connection.dialect.name == "postgresql":
        if isinstance(column.type, String):
            # A text[] literal written here: psycopg's list dumper tests every
            # element against a regex, 0.4 s of a 100k-message mailbox's diff.
            # The parameter goes untyped (psycopg sends a str as "unknown") so
            # that the server types it text[] itself and the plan holds it as
            # a constant, which `= ANY` searches by hash. A `$1::VARCHAR` cast
            # to text[] would be a run-time cast, and each row a linear search
            # of the array: an UPDATE of 100k rows took minutes.
            literal = bindparam(None, _text_array_literal(values), type_=NullType())
            return column == any_(cast(literal, ARRAY(Text())))
        array = bindparam(None, list(values), type_=ARRAY(column.type))
        return column == any_(array)
    members = func.json_each(json.dumps(list(values))).table_valued("value")
    return column.in_(select(members.c.value))


def _text_array_literal(values: Sequence[str]) -> str:
    """``values`` as a PostgreSQL array literal: each element quoted, ``\\`` and ``"`` escaped.

    (PostgreSQL documentation, 8.15.6 "Array Input and Output Syntax".) An
    element in double quotes may hold anything else: commas, braces, spaces.
    """
    if not values:
        return "{}"
    joined = '","'.join(values)
    # Each separator brings two quotes: any more are the values' own.
    if "\\" in joined or joined.count('"') != 2 * (len(values) - 1):
        # Rare in UIDLs (RFC 1939 section 7 allows them): escape element by element.
        quoted = (value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
        joined = '","'.join(quoted)
    return '{"' + joined + '"}'


def pair_of(key: KeyLike) -> Pair:
    """``key`` as (uidl, occurrence): a plain UIDL string is occurrence 1."""
    if isinstance(key, str):
        return (key, 1)
    if isinstance(key, MessageKey):
        return (key.uidl, key.occurrence)
    raise TypeError(f"a message key is a UIDL string or a MessageKey, got {key!r}")


def unique_pairs(keys: Iterable[KeyLike]) -> list[Pair]:
    """The keys as pairs, in input order, each once ("m" and MessageKey("m") are one)."""
    return list(dict.fromkeys(pair_of(key) for key in keys))


def uidls_of(pairs: Iterable[Pair]) -> list[str]:
    """The distinct UIDLs of ``pairs``, in order."""
    return list(dict.fromkeys(uidl for uidl, _ in pairs))


def pairs_among(
    uidl: ColumnElement[str],
    occurrence: ColumnElement[int],
    pairs: Sequence[Pair],
    connection: Connection,
) -> ColumnElement[bool]:
    """``(uidl, occurrence) IN pairs`` as one statement with bounded parameters.

    Row-value IN lists would cost two parameters a key and have no bulk
    form; instead the pairs are grouped and each group is an :func:`among`.
    Nearly every key is occurrence 1, so grouping by occurrence usually gives
    one ``occurrence = 1 AND uidl IN (...)``; a mailbox of many identical
    messages (one UIDL, hundreds of occurrences) groups better by UIDL.
    Whichever grouping has fewer groups is used.
    """
    if not pairs:
        return false()  # or_() of nothing is deprecated, and means nothing anyway
    by_occurrence: dict[int, list[str]] = {}
    by_uidl: dict[str, list[int]] = {}
    for key_uidl, key_occurrence in pairs:
        by_occurrence.setdefault(key_occurrence, []).append(key_uidl)
        by_uidl.setdefault(key_uidl, []).append(key_occurrence)
    if len(by_occurrence) <= len(by_uidl):
        return or_(
            *(
                and_(occurrence == number, among(uidl, uidls, connection))
                for number, uidls in by_occurrence.items()
            )
        )
    return or_(
        *(
            and_(uidl == name, among(occurrence, numbers, connection))
            for name, numbers in by_uidl.items()
        )
    )
