"""The ledger facade: what the rest of popvault knows about the database.

Callers get plain frozen dataclasses and popvault errors; no SQLAlchemy type
crosses this boundary. Every write commits before its method returns, and the
commit is durable (SQLite ``synchronous=FULL``; PostgreSQL
``synchronous_commit=on``): the orchestrator may delete the server's copy of a
message as soon as :meth:`Ledger.mark_archived` returns.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from popvault.ledger.core import LedgerCore
from popvault.ledger.dispatch import DispatchMixin
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.failures import FailuresMixin
from popvault.ledger.holds import HoldsMixin
from popvault.ledger.imports import ImportsMixin
from popvault.ledger.leases import LeasesMixin
from popvault.ledger.ledger_id import LedgerIdMixin
from popvault.ledger.locking import LockingMixin
from popvault.ledger.messages import MessagesMixin
from popvault.ledger.migrate import check_engine, upgrade_engine
from popvault.ledger.reports import ReportsMixin
from popvault.ledger.retention import RetentionMixin
from popvault.ledger.runs import RunsMixin
from popvault.ledger.schedules import SchedulesMixin


class Ledger(
    MessagesMixin,
    RetentionMixin,
    HoldsMixin,
    ImportsMixin,
    FailuresMixin,
    DispatchMixin,
    LockingMixin,
    RunsMixin,
    ReportsMixin,
    SchedulesMixin,
    LedgerIdMixin,
    LeasesMixin,
    LedgerCore,
):
    """The record of which messages of which account are safely archived.

    Open it with :meth:`open`; use it as a context manager or call
    :meth:`close`. A Ledger may be shared by threads (each call takes its own
    pooled connection), except for an in-memory SQLite ledger.

    A message is named by a key: its UIDL and its occurrence under that UIDL
    (:class:`~popvault.ledger.records.MessageKey`), or a plain UIDL string,
    which means occurrence 1.

    Each concern lives in a mixin of its own module (messages, retention,
    holds, imports, failures, dispatch, locking, runs, reports, schedules, the
    ledger's id, leases);
    :class:`LedgerCore` holds the engine and the read and write blocks they
    share. :class:`LeasesMixin` comes last before it: its write block is the
    one every other concern's writes go through, so that a view made by
    :meth:`fenced` fences them all.
    """

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Ledger:
        """Connect to the ledger at ``url``, upgrading its schema if ``upgrade``.

        With ``upgrade=False`` a schema that is not current raises
        :class:`~popvault.errors.SchemaMismatch`. An unreachable database
        raises :class:`~popvault.errors.DatabaseUnavailable`.
        """
        engine = create_ledger_engine(parse_url(url))
        try:
            if upgrade:
                upgrade_engine(engine)
            else:
                check_engine(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def __repr__(self) -> str:
        return f"<Ledger {self.url}>"

    def close(self) -> None:
        """Release every pooled connection; the Ledger cannot be used after.

        On a view made by :meth:`fenced` it does nothing: the ledger the
        view came from owns the connections.
        """
        if self._fence is None and not self._closed:
            self._closed = True
            if self._keeper is not None:
                # Otherwise its thread goes on trying to renew on a closed
                # ledger, a warning every heartbeat.
                self._keeper.stop()
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
