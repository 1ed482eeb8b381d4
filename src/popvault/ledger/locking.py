"""The Ledger's locks: one session per account, one daemon per SQLite ledger.

The lock kinds themselves live in :mod:`popvault.ledger.locks` and
:mod:`popvault.ledger.leases`; this module picks one from the ledger's URL
and turns a refusal into the popvault errors callers see.

PostgreSQL: an account is held by a **lease** (issue 11), not by a session
advisory lock any more. The advisory lock was dropped, for three reasons:
it does not die with a *stalled* holder (SIGSTOP, a frozen VM, a half-open
TCP connection keep the session for hours), and kept beside a lease it would
stop the lease's new holder from ever starting while the stalled session
lives, which is the very case leases are for; it pins one pooled connection
per running account for the whole run; and two locks that can disagree are
one too many. The price: a holder killed outright leaves its lease for up to
its time to live (30 s by default) before another run may take the account.
SQLite keeps its flock: one machine, and a stalled holder keeps everyone else
waiting, never lets them run beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

from popvault.errors import LedgerError
from popvault.ledger.engine import sqlite_file
from popvault.ledger.keeper import AccountHold, LeaseKeeper
from popvault.ledger.leases import Lease, LeaseOwner, LeasesMixin, LeaseTerms
from popvault.ledger.locks import (
    POLL_INTERVAL_S,
    LockHeld,
    daemon_lock_path,
    file_lock,
    lock_file_path,
)
from popvault.ledger.records import AccountBusy, DaemonRunning

log = logging.getLogger("popvault.ledger")


class LockingMixin(LeasesMixin):
    """The Ledger's account and daemon locks."""

    # The owner of this Ledger object's leases and their heartbeat (PostgreSQL), made on first use.
    _lease_owner: LeaseOwner | None = None
    _keeper: LeaseKeeper | None = None

    @property
    def lease_owner(self) -> LeaseOwner:
        """Who this Ledger object's leases name: this host and process, a random daemon id."""
        if self._lease_owner is None:
            self._lease_owner = LeaseOwner.new()
        return self._lease_owner

    @contextmanager
    def account_lock(
        self,
        account: str,
        *,
        wait: float = 0.0,
        terms: LeaseTerms | None = None,
        server_host: str | None = None,
        claimed: AccountHold | None = None,
    ) -> Iterator[AccountHold]:
        """Hold the account for the block: one session per account at once.

        Raises :class:`AccountBusy` if another holder keeps it for ``wait``
        seconds. SQLite: a flock on ``<db file>.lock.d/<account>.lock``;
        in-memory SQLite: a lock of this Ledger; a holder that dies (even by
        SIGKILL) releases it. PostgreSQL: a lease on the terms given (the
        module docstring says why), renewed by a heartbeat until the block
        ends and released then; the hold's ``ledger`` is fenced by it, and
        its ``check()`` says whether it is still held. Not re-entrant: a
        nested call for the same account waits, then is refused.

        ``claimed``: a hold the caller got from
        :meth:`~popvault.ledger.dispatch.DispatchMixin.claim_due` (a daemon);
        the block uses its lease instead of claiming one, and leaves it held
        at the end for the caller to finish or release.
        """
        self._require_open()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock_for(account, wait))
            except LockHeld as held:
                raise AccountBusy(account, held.pid) from None
            if self._engine.dialect.name != "postgresql":
                yield AccountHold(self)
                return
            if claimed is not None and claimed.lease is not None:
                if claimed.lease.account != account:
                    raise ValueError(f"a claim of {claimed.lease.account!r} given for {account!r}")
                yield claimed
                return
            hold = self._claim_until(account, terms or LeaseTerms(), server_host, wait)
            keeper = self._keeper_for(terms or LeaseTerms())
            try:
                yield hold
            finally:
                keeper.remove(hold)
                # A ledger closed under the block (a daemon stopping) lets the
                # lease expire on its own: there is no connection to release it by.
                if hold.lease is not None and hold.lost is None and not self._closed:
                    try:
                        self.release_lease(hold.lease)
                    except LedgerError as exc:  # it expires on its own
                        log.warning("account %r: could not release its lease: %s", account, exc)

    def _claim_until(
        self, account: str, terms: LeaseTerms, server_host: str | None, wait: float
    ) -> AccountHold:
        """Claim the account's lease, trying again for ``wait`` seconds; AccountBusy if held."""
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            sent_at = time.monotonic()
            lease = self.claim_lease(account, self.lease_owner, terms.ttl, server_host=server_host)
            if lease is not None:
                hold = AccountHold(self.fenced(lease), lease, _check_database=self._still_held)
                self._keeper_for(terms).add(hold, sent_at)
                return hold
            if time.monotonic() >= deadline:
                current = self.current_lease(account)
                raise AccountBusy(account, None if current is None else current.owner.pid)
            time.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0.0)))

    def _still_held(self, lease: Lease) -> None:
        self.check_lease(lease)

    def _keeper_for(self, terms: LeaseTerms) -> LeaseKeeper:
        if self._keeper is None:
            self._keeper = LeaseKeeper(self, terms)
        return self._keeper

    def _lock_for(self, account: str, wait: float) -> AbstractContextManager[None]:
        if self._engine.dialect.name == "postgresql":
            # Within this process (two runs of one Ledger): a thread lock; across
            # processes the lease decides (account_lock).
            return self._local_locks.hold(account, wait=wait)
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
