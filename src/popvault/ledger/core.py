"""What every concern of the Ledger shares: its state, connection blocks and checks.

:class:`LedgerCore` is the base of the per-concern mixins that
:class:`~popvault.ledger.facade.Ledger` is made of; it holds the engine and
opens the read and write blocks each method runs in. The module functions
check arguments and build bounded IN conditions for any table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Connection, Engine, any_, bindparam, func, select
from sqlalchemy.orm import InstrumentedAttribute

from popvault.errors import LedgerError
from popvault.ledger.engine import WRITE_INTENT, redact, translate_errors
from popvault.ledger.locks import LocalLocks

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


def among(
    column: InstrumentedAttribute[Any], values: Sequence[Any], connection: Connection
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
        array = bindparam(None, list(values), type_=ARRAY(column.type))
        return column == any_(array)
    members = func.json_each(json.dumps(list(values))).table_valued("value")
    return column.in_(select(members.c.value))
