"""The Ledger's locks: one session per account, one daemon per SQLite ledger.

The lock kinds themselves live in :mod:`popvault.ledger.locks`; this module
picks one from the ledger's URL and turns :class:`LockHeld` into the
popvault errors callers see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

from popvault.ledger.core import LedgerCore
from popvault.ledger.engine import sqlite_file
from popvault.ledger.locks import (
    LockHeld,
    advisory_key,
    advisory_lock,
    daemon_lock_path,
    file_lock,
    lock_file_path,
)
from popvault.ledger.records import AccountBusy, DaemonRunning


class LockingMixin(LedgerCore):
    """The Ledger's account and daemon locks."""

    @contextmanager
    def account_lock(self, account: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the account's lock for the block: one session per account at once.

        Raises :class:`AccountBusy` if another holder keeps it for ``wait``
        seconds. SQLite: a flock on ``<db file>.lock.d/<account>.lock``;
        in-memory SQLite: a lock of this Ledger; PostgreSQL: an advisory lock
        on a connection of its own. A holder that dies (even by SIGKILL)
        releases it. Not re-entrant: a nested call for the same account waits.
        """
        self._require_open()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock_for(account, wait))
            except LockHeld as held:
                raise AccountBusy(account, held.pid) from None
            yield

    def _lock_for(self, account: str, wait: float) -> AbstractContextManager[None]:
        if self._engine.dialect.name == "postgresql":
            return advisory_lock(self._engine, advisory_key(account), wait=wait)
        database = sqlite_file(self._engine.url)
        if database is None:
            return self._local_locks.hold(account, wait=wait)
        return file_lock(lock_file_path(database, account), wait=wait)

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Hold the ledger's daemon lock for the block: one ``popvault daemon`` per ledger.

        Raises :class:`DaemonRunning` at once if another holder has it. SQLite:
        a flock on ``<db file>.lock.d/@daemon.lock``; in-memory SQLite: a lock
        of this Ledger; PostgreSQL: no lock at all (several daemons may share
        it; the per-account locks keep their sessions apart).
        """
        self._require_open()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._daemon_lock_for())
            except LockHeld as held:
                raise DaemonRunning(self.url, held.pid) from None
            yield

    def _daemon_lock_for(self) -> AbstractContextManager[None]:
        if self._engine.dialect.name == "postgresql":
            return nullcontext()
        database = sqlite_file(self._engine.url)
        if database is None:
            return self._daemon_locks.hold("daemon", wait=0.0)
        return file_lock(daemon_lock_path(database), wait=0.0)
