"""The ledger as the daemons' shared schedule: claim due accounts, finish them (issue 11 part 3).

Every daemon on one ledger reads the same ``schedules`` rows: an account is
due when its ``next_run_at`` has come and no live lease holds it. A daemon
with a free slot claims due accounts (:meth:`DispatchMixin.claim_due`), runs
them, and writes each one's next run while it still holds the lease
(:meth:`DispatchMixin.finish_claim`): so whichever daemon has room runs the
account, each account runs once per tick whatever the number of daemons, and
a daemon that joins or leaves changes nothing for the others.

Why the next run is written only at the end, never at the claim: a holder
that dies (SIGKILL) or stalls leaves its account *due*, so the first daemon
with a free slot after the lease expires takes it again (within the lease's
time to live), instead of waiting for the next tick.

PostgreSQL, one transaction per claim: the due rows are read ``FOR UPDATE
SKIP LOCKED`` (two daemons claiming at once get different accounts, neither
waits), then each account's lease is claimed with the same statement as
:meth:`~popvault.ledger.leases.LeasesMixin.claim_lease`. ``max_per_host``
bounds the live leases per POP3 server across all daemons: the claimer takes
a transaction advisory lock per server name (in sorted order, so that two
claimers never wait for each other in a cycle), counts that server's live
leases under it, and claims only up to the bound; the lock is held until
commit, so a second claimer counts the first one's new leases.

SQLite: one machine and one daemon (the daemon lock); the same query, the
account locks stay file locks taken by the run, and the claimer leaves out
the accounts it is running itself.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, exists, func, select, text

from popvault.ledger.core import among, require_aware
from popvault.ledger.keeper import AccountHold
from popvault.ledger.leases import (
    Lease,
    LeaseOwner,
    LeaseTerms,
    _claim_statement,
    claim_values,
    release,
    server_key,
)
from popvault.ledger.locking import LockingMixin
from popvault.ledger.models import Lease as LeaseRow
from popvault.ledger.models import Schedule, UTCDateTime
from popvault.ledger.schedules import ScheduleEntry, insert_many, upsert

# The first key of the per-server advisory locks (the second is the server
# name's hash): a class of locks of its own, apart from any other user of
# advisory locks on the same database. "popv" in ASCII.
_SERVER_LOCK_CLASS = 0x706F7076

# Rows read per claim beyond the slots to fill: accounts whose server is full
# are skipped under the server lock, and the next due ones take their place.
_SCAN_MARGIN = 32


@dataclass(frozen=True, slots=True)
class DueRun:
    """A due account claimed by :meth:`DispatchMixin.claim_due`: run it, then finish it.

    ``due_at`` is the row's ``next_run_at`` when it was claimed;
    ``consecutive_failures`` and ``backoff_reason`` are the account's as the
    last run (by any daemon) left them. ``hold``: on PostgreSQL the claim's
    lease, already kept alive by the heartbeat (give it to the run, then to
    :meth:`DispatchMixin.finish_claim` or :meth:`DispatchMixin.release_claim`);
    None on SQLite (the run takes its file lock).
    """

    account: str
    due_at: datetime
    consecutive_failures: int
    backoff_reason: str | None
    hold: AccountHold | None = None


class DispatchMixin(LockingMixin):
    """The Ledger's shared schedule: which accounts are due, who runs them."""

    @property
    def shared(self) -> bool:
        """Whether several daemons may share this ledger (PostgreSQL; a SQLite file has one)."""
        return self._engine.dialect.name == "postgresql"

    def claim_due(
        self,
        servers: Mapping[str, str | None],
        *,
        limit: int,
        terms: LeaseTerms | None = None,
        max_per_host: int | None = None,
        busy: Collection[str] = (),
        now: datetime | None = None,
    ) -> list[DueRun]:
        """Claim up to ``limit`` due accounts among ``servers`` (account -> POP3 server).

        Earliest due first. PostgreSQL: each is leased on ``terms`` to this
        Ledger's owner, at most ``max_per_host`` live leases per server
        counting every daemon's (None: no bound). ``busy``: accounts this
        process is running already (left out; on PostgreSQL their leases
        leave them out anyway).
        """
        if limit <= 0:
            return []
        names = [name for name in servers if name not in busy]
        if not names:
            return []
        terms = terms or LeaseTerms()
        if not self.shared:
            # SQLite: nothing to claim (the run takes its file lock), so a read:
            # a write transaction every second would take the database's write
            # lock from a `popvault run` beside the daemon for nothing.
            with self._reading() as connection:
                at = _now(connection, now)
                rows = _due_rows(connection, names, at, limit, len(servers) - len(names))
                return [_due_run(row, None) for row in rows]
        sent_at = time.monotonic()
        with self._writing() as connection:
            at = _now(connection, now)
            scan = limit if max_per_host is None else limit + _SCAN_MARGIN
            rows = _due_rows(connection, names, at, scan)
            claimed = _claim_rows(
                connection,
                rows,
                servers,
                at=at,
                terms=terms,
                max_per_host=max_per_host,
                limit=limit,
                owner=self.lease_owner,
            )
        runs = []
        for row, lease in claimed:
            hold = AccountHold(self.fenced(lease), lease, _check_database=self._still_held)
            self._keeper_for(terms).add(hold, sent_at)
            runs.append(_due_run(row, hold))
        return runs

    def finish_claim(self, run: DueRun, entry: ScheduleEntry) -> None:
        """Record the account's next run (``entry``) and give its lease up, in one transaction.

        Through the lease's fence: a run whose lease passed to another daemon
        raises :class:`~popvault.errors.LeaseLost` and writes nothing (the new
        holder plans the account). If the row's next run was moved while the
        account ran (a reload asked for a run soon), the earlier of the two
        stays.
        """
        require_aware(entry.updated_at, "updated_at")
        hold = run.hold
        writer = self if hold is None else hold.ledger
        try:
            with writer._writing() as connection:
                upsert(connection, _keep_earlier(connection, run, entry))
                if hold is not None and hold.lease is not None:
                    release(connection, hold.lease)
        finally:
            if hold is not None:
                self._keeper_for(LeaseTerms()).remove(hold)

    def release_claim(self, run: DueRun) -> None:
        """Give the claim up without planning anything: the account stays due for any daemon."""
        hold = run.hold
        if hold is None:
            return
        self._keeper_for(LeaseTerms()).remove(hold)
        if hold.lease is not None and hold.lost is None:
            self.release_lease(hold.lease)

    def ensure_schedules(self, entries: Collection[ScheduleEntry], *, replace: bool) -> None:
        """Give each account of ``entries`` a row: all replaced, or only the missing ones added."""
        if not entries:
            return
        with self._writing() as connection:
            insert_many(connection, list(entries), replace=replace)

    def other_daemons(self, *, pid: int, host: str, fresh_after: datetime) -> list[tuple[str, int]]:
        """The (host, pid) of the other daemons whose rows were refreshed after ``fresh_after``."""
        query = (
            select(Schedule.daemon_host, Schedule.daemon_pid)
            .where(Schedule.updated_at > fresh_after)
            .distinct()
        )
        with self._reading() as connection:
            found = [(row.daemon_host, row.daemon_pid) for row in connection.execute(query)]
        return sorted(daemon for daemon in found if daemon != (host, pid))


def _due_run(row: Any, hold: AccountHold | None) -> DueRun:
    return DueRun(row.account, row.next_run_at, row.consecutive_failures, row.backoff_reason, hold)


def _now(connection: Connection, now: datetime | None) -> datetime:
    """``now``, else PostgreSQL's clock (one for all daemons), else this machine's."""
    if now is not None:
        require_aware(now, "now")
        return now
    if connection.dialect.name == "postgresql":
        at: datetime | None = connection.scalar(
            select(func.statement_timestamp(type_=UTCDateTime()))
        )
        if at is not None:
            return at
    return datetime.now(UTC)


def _due_rows(
    connection: Connection, names: list[str], at: datetime, scan: int, busy: int = 0
) -> list[Any]:
    """Up to ``scan`` due rows of ``names``, earliest first (locked on PostgreSQL).

    First without the names: every daemon usually has the same accounts, and
    the account list (10,000 names) would cost more than the query; only if
    rows of other accounts took places is the query made again with it.
    ``busy`` more rows are read for the accounts this daemon runs now (not
    among ``names``): on SQLite they stay due until their runs end, and
    without the room they took the places and sent every claim to the
    second query (most of a 10,000-account daemon's start-up round).
    """
    wanted = set(names)
    rows = list(connection.execute(_due_query(connection, None, at, scan + busy)))
    mine = [row for row in rows if row.account in wanted]
    if len(mine) >= scan or len(rows) < scan + busy:
        return mine[:scan]
    return list(connection.execute(_due_query(connection, names, at, scan)))


def _due_query(connection: Connection, names: list[str] | None, at: datetime, scan: int) -> Any:
    live = exists().where(LeaseRow.account == Schedule.account, LeaseRow.expires_at > at)
    query = (
        select(
            Schedule.account,
            Schedule.next_run_at,
            Schedule.consecutive_failures,
            Schedule.backoff_reason,
        )
        .where(Schedule.next_run_at <= at, ~live)
        .order_by(Schedule.next_run_at, Schedule.account)
        .limit(scan)
    )
    if names is not None:
        query = query.where(among(Schedule.account, names, connection))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Schedule.__table__)
    return query


def _claim_rows(
    connection: Connection,
    rows: list[Any],
    servers: Mapping[str, str | None],
    *,
    at: datetime,
    terms: LeaseTerms,
    max_per_host: int | None,
    limit: int,
    owner: LeaseOwner,
) -> list[tuple[Any, Lease]]:
    """Lease the rows' accounts in order, up to ``limit`` and the per-server bound."""
    hosts = {row.account: server_key(servers.get(row.account)) for row in rows}
    live: dict[str, int] = {}
    if max_per_host is not None:
        live = _lock_and_count(connection, sorted({h for h in hosts.values() if h}), at)
    claimed: list[tuple[Any, Lease]] = []
    for row in rows:
        if len(claimed) >= limit:
            break
        host = hosts[row.account]
        if max_per_host is not None and host and live.get(host, 0) >= max_per_host:
            continue
        values = claim_values(row.account, owner, at, at + terms.ttl, host)
        got = connection.execute(_claim_statement(connection, values)).first()
        if got is None:  # a `popvault run` took it since the due query
            continue
        lease = Lease(row.account, owner, got.token, got.claimed_at, got.expires_at, host)
        claimed.append((row, lease))
        if host:
            live[host] = live.get(host, 0) + 1
    return claimed


def _lock_and_count(connection: Connection, hosts: list[str], at: datetime) -> dict[str, int]:
    """Take each server's advisory lock (sorted order), then count its live leases."""
    if not hosts:
        return {}
    # One statement for every server, taken in the sorted order of the subquery
    # (hosts is sorted already; ORDER BY keeps it so whatever the plan).
    lock = text(
        "SELECT count(pg_advisory_xact_lock(:class_id, hashtext(host))) "
        "FROM (SELECT unnest(CAST(:hosts AS text[])) AS host ORDER BY 1) AS servers"
    )
    connection.execute(lock, {"class_id": _SERVER_LOCK_CLASS, "hosts": hosts})
    query = (
        select(LeaseRow.server_host, func.count())
        .where(among(LeaseRow.server_host, hosts, connection), LeaseRow.expires_at > at)
        .group_by(LeaseRow.server_host)
    )
    return {host: int(count) for host, count in connection.execute(query) if host is not None}


def _keep_earlier(connection: Connection, run: DueRun, entry: ScheduleEntry) -> ScheduleEntry:
    """``entry``, unless the row was moved since the claim to a run sooner than it plans."""
    query = select(Schedule.next_run_at).where(Schedule.account == run.account)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    moved = connection.scalar(query)
    planned = entry.next_run_at
    if moved is not None and moved > run.due_at and (planned is None or moved < planned):
        return replace(entry, next_run_at=moved)
    return entry


__all__ = ["DispatchMixin", "DueRun"]
