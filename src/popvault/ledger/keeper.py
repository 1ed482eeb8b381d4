"""The heartbeat that keeps a process's leases alive, and what a run holds while it runs.

One :class:`LeaseKeeper` per Ledger object (so per daemon): a thread that
renews every lease the process holds in one statement per heartbeat
(:meth:`~popvault.ledger.leases.LeasesMixin.renew_leases`), however many
accounts run at once. A lease the renewal does not return was lost; the
keeper says so to its :class:`AccountHold`, whose :meth:`~AccountHold.check`
then raises at once.

A renewal also moves the hold's *local deadline*: the monotonic time at which
the renewal was sent, plus the time to live. The database stamps the new
expiry after that moment, so the deadline is never later than the real
expiry (on one clock rate). A holder cut off from PostgreSQL (its renewals
hang or fail) thus knows, without asking the database, when the lease may
have passed to someone else: before each DELE batch and before QUIT it
stops on the local deadline, or else asks the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from popvault.errors import LeaseLost, LedgerError
from popvault.ledger.leases import Lease, LeasesMixin, LeaseTerms

log = logging.getLogger("popvault.ledger")


@dataclass(eq=False)
class AccountHold:
    """What :meth:`~popvault.ledger.Ledger.account_lock` gives the run that holds an account.

    ``ledger``: the ledger the run writes through: a view fenced by the
    lease on PostgreSQL, the plain ledger on SQLite (whose file lock cannot
    pass to anyone while its holder lives). ``lease``: the lease, or None.
    """

    ledger: LeasesMixin
    lease: Lease | None = None
    # time.monotonic() past which the lease may have expired; updated by the keeper.
    deadline: float = float("inf")
    lost: str | None = None
    _check_database: Callable[[Lease], None] | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise :class:`~popvault.errors.LeaseLost` unless the run still holds its lease.

        For the run's last look before each DELE batch and before QUIT. No-op
        without a lease. The heartbeat's news and the local deadline first
        (no round trip); then the database's row.
        """
        lease = self.lease
        if lease is None:
            return
        if self.lost is not None:
            raise _lost(lease, self.lost)
        if time.monotonic() >= self.deadline:
            raise _lost(lease, "no renewal reached the ledger within the lease's time to live")
        if self._check_database is not None:
            self._check_database(lease)


class LeaseKeeper:
    """Renews the leases of one ledger's holds every heartbeat, on a thread of its own."""

    def __init__(self, ledger: LeasesMixin, terms: LeaseTerms) -> None:
        self._ledger = ledger
        self.terms = terms
        self._holds: dict[str, AccountHold] = {}
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, hold: AccountHold, sent_at: float) -> None:
        """Keep ``hold``'s lease alive from now on (its claim was sent at ``sent_at``)."""
        assert hold.lease is not None  # noqa: S101 - only leased holds are kept
        hold.deadline = sent_at + self.terms.ttl.total_seconds()
        with self._guard:
            self._holds[hold.lease.account] = hold
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="popvault lease heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, hold: AccountHold) -> None:
        """Stop renewing ``hold``'s lease (the run ended)."""
        if hold.lease is None:
            return
        with self._guard:
            if self._holds.get(hold.lease.account) is hold:
                del self._holds[hold.lease.account]

    def stop(self) -> None:
        """Stop renewing every lease and end the heartbeat thread (the ledger is closing).

        The holds' deadlines stay as they are: a run still going stops on
        its own at its deadline, as when a renewal fails, and its lease
        expires at the database like a killed holder's.
        """
        with self._guard:
            self._holds.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def renew_now(self) -> None:
        """One renewal of every kept lease, at once (the loop's step; tests call it)."""
        with self._guard:
            holds = list(self._holds.values())
        leases = [hold.lease for hold in holds if hold.lease is not None]
        if not leases:
            return
        sent_at = time.monotonic()
        try:
            renewed = self._ledger.renew_leases(leases, self.terms.ttl)
        except LedgerError as exc:
            # The local deadlines stay where they are: the runs stop on them.
            log.warning("could not renew %d lease(s): %s", len(leases), exc)
            return
        for hold in holds:
            lease = hold.lease
            assert lease is not None  # noqa: S101 - filtered above
            expiry = renewed.get((lease.account, lease.token))
            if expiry is None:
                with self._guard:
                    kept = self._holds.get(lease.account) is hold
                if not kept:
                    # Its run ended and gave the lease up while this renewal was under
                    # way: not renewed because released, not lost.
                    continue
                hold.lost = "the heartbeat found it expired or claimed by another holder"
                log.warning(
                    "account %r: lease with token %d lost (expired or claimed by another "
                    "daemon); its run stops without QUIT",
                    lease.account,
                    lease.token,
                )
                self.remove(hold)
            else:
                hold.lease = Lease(
                    lease.account,
                    lease.owner,
                    lease.token,
                    lease.claimed_at,
                    expiry,
                    lease.server_host,
                )
                hold.deadline = sent_at + self.terms.ttl.total_seconds()

    def _loop(self) -> None:
        interval = self.terms.heartbeat.total_seconds()
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            with self._guard:
                if not self._holds:
                    self._thread = None
                    return
            try:
                self.renew_now()
            except Exception:  # a bug here must not end the heartbeat of the other runs
                log.exception("unexpected error in the lease heartbeat")


def _lost(lease: Lease, why: str) -> LeaseLost:
    return LeaseLost(
        f"account {lease.account!r}: lease with token {lease.token} lost: {why}",
        account=lease.account,
        token=lease.token,
    )


__all__ = ["AccountHold", "LeaseKeeper"]
