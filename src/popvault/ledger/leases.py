"""Leases with fencing tokens: which daemon may run an account now (issue 11 part 2).

A session advisory lock dies with its connection, not with a *stalled*
holder: a daemon paused by SIGSTOP, a VM freeze or a swap storm, or cut off
behind a half-open TCP connection, keeps it for as long as PostgreSQL keeps
the session, and carries on when it wakes. A lease expires instead: a row of
``leases`` per account names its holder (host, pid, a random id per daemon
process) and an expiry, which the holder's heartbeat pushes forward
(:meth:`LeasesMixin.renew_lease`) well inside the time to live.

Expiry alone cannot stop a holder that wakes after it: so every claim also
gives the account a new **fencing token**, one more than the last (the row is
never deleted, so it is the account's token counter and no token is given out
twice; ``popvault db copy`` carries the row, and the counter with it). A run
makes its writes through :meth:`LeasesMixin.fenced`, a view of the ledger
whose every write transaction first locks the lease row (``SELECT ... FOR
UPDATE``; SQLite: ``BEGIN IMMEDIATE`` holds the whole database) and goes on
only while the row still carries the run's token and has not expired;
otherwise it raises :class:`~popvault.errors.LeaseLost` and writes nothing.

Why this keeps every message archived exactly once. The lease row is locked
for the whole of each fenced write, so a claim and a write are ordered: a
write either commits before the new holder's claim (and the new holder's run,
which starts after its claim, sees it) or fails. What a fenced-out run may
have done outside the ledger is harmless: a message file it wrote is either
an unpublished temporary file (never named in the ledger, so never counted
as archived) or the file of a *pending* row that it recorded while it still
held the lease; the next holder settles pending rows (checks the file, then
marks it archived or drops the row) before it fetches anything, and fetches
whatever has no row. The ledger never vouches for a message twice because a
key has one row (``uq_messages_account_uidl_occurrence``), and the server
deletes nothing for the stale run: it records DELE only through the fence and
checks the lease before each DELE batch and before QUIT (the run's side), and
a session that ends without QUIT deletes nothing (RFC 1939 section 6).

Times: every method takes ``now`` for tests that drive the clock. Left out, it
is the database's clock on PostgreSQL (one clock for every daemon on every
host, so their clocks' skew cannot shorten a lease) and this machine's on
SQLite (one machine).
"""

from __future__ import annotations

import copy
import os
import platform
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from sqlalchemy import (
    ColumnElement,
    Connection,
    Interval,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)

from popvault.errors import LeaseLost
from popvault.ledger.core import LedgerCore, require_aware, upsert_insert
from popvault.ledger.models import Lease as LeaseRow
from popvault.ledger.models import UTCDateTime

# A clock for a fenced view: None means the database's (see the module docstring).
Clock = Callable[[], datetime]

# Leases renewed per statement: 2 parameters each, far below SQLite's 999 (before
# 3.32) and PostgreSQL's 65,535 bound parameters.
_RENEW_BATCH = 400

# secrets.token_hex(8): 64 random bits, as 16 hex digits; two daemons drawing the
# same id is a 1 in 2**32 chance only past 65,000 daemon starts sharing one ledger.
_DAEMON_ID_BYTES = 8


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """How long a claim lasts (``ttl``) and how often its holder renews it (``heartbeat``).

    The heartbeat must come well inside the lease: at most half of it, so
    that one late or failed renewal is retried before the lease runs out.
    30 s and 10 s by default: a stalled holder is fenced out and its account
    taken by another daemon within about 40 s, while a renewal costs one
    statement per daemon every 10 s, whatever number of accounts it runs.
    """

    ttl: timedelta = timedelta(seconds=30)
    heartbeat: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        _require_ttl(self.ttl)
        if not timedelta(0) < self.heartbeat <= self.ttl / 2:
            raise ValueError(
                f"a lease's heartbeat must be positive and at most half its time to live "
                f"({self.ttl}), got {self.heartbeat}"
            )


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """Who holds a lease: a host, a process, and a random id of the daemon process.

    ``daemon_id`` is what makes a lease *ours*: make one owner when the
    daemon starts (:meth:`new`) and claim every account with it. A restarted
    daemon, even one that gets the same pid, is another owner.
    """

    host: str
    pid: int
    daemon_id: str

    @classmethod
    def new(cls) -> LeaseOwner:
        """This process on this host, with a new random daemon id."""
        return cls(platform.node() or "localhost", os.getpid(), secrets.token_hex(_DAEMON_ID_BYTES))

    def describe(self) -> str:
        """``host pid 42 (daemon 0123abcd...)``, for messages."""
        return f"{self.host} pid {self.pid} (daemon {self.daemon_id})"


@dataclass(frozen=True, slots=True)
class Lease:
    """An account's lease as its holder got it from a claim or a renewal.

    ``token`` is the fencing token of the claim; ``expires_at`` is when the
    lease is free for others unless renewed (aware UTC). ``server_host`` is
    the POP3 server the holder said it would talk to, if it said.
    """

    account: str
    owner: LeaseOwner
    token: int
    claimed_at: datetime
    expires_at: datetime
    server_host: str | None = None


@dataclass(frozen=True, slots=True)
class _Fence:
    """What a fenced view checks before each write, and the ledger it came from."""

    lease: Lease
    clock: Clock | None
    parent: LedgerCore


class LeasesMixin(LedgerCore):
    """The Ledger's leases: claim, renew, release, check, and fenced writes."""

    # Set only on a view made by fenced(); the plain Ledger writes unfenced.
    _fence: _Fence | None = None

    def claim_lease(
        self,
        account: str,
        owner: LeaseOwner,
        ttl: timedelta,
        *,
        now: datetime | None = None,
        server_host: str | None = None,
    ) -> Lease | None:
        """Take the account's lease for ``ttl``, or None if another owner holds it.

        Taken when the account has no lease yet, when its lease has expired
        (or was released), or when ``owner`` holds it already; each claim
        gives a new fencing token (a re-claim by the holder fences out its
        own earlier run too). One statement (an upsert whose update applies
        only to a free or own row, RETURNING the result), so two claimers
        cannot both win: PostgreSQL locks the row for the first and checks the
        condition again against its commit for the second.
        """
        _require_ttl(ttl)
        with LedgerCore._writing(self) as connection:
            claimed, expires = _times(connection, now, ttl)
            values = claim_values(account, owner, claimed, expires, server_host)
            row = connection.execute(_claim_statement(connection, values)).first()
        if row is None:
            return None
        return Lease(
            account, owner, row.token, row.claimed_at, row.expires_at, server_key(server_host)
        )

    def renew_lease(self, lease: Lease, ttl: timedelta, *, now: datetime | None = None) -> Lease:
        """Push the lease's expiry to ``now + ttl``; returns the renewed lease.

        Raises :class:`~popvault.errors.LeaseLost` if the lease has expired or
        passed to another claim (even one by the same owner): a heartbeat
        that came too late must not revive a lease someone may have taken.
        """
        _require_ttl(ttl)
        with LedgerCore._writing(self) as connection:
            start, expires = _times(connection, now, ttl)
            statement = (
                update(LeaseRow)
                .where(*_held(lease), LeaseRow.expires_at > start)
                .values(expires_at=expires)
                .returning(LeaseRow.expires_at)
            )
            renewed = connection.execute(statement).scalar()
            if renewed is None:
                # Say what became of it: the row can only have moved further away since.
                _check(connection, lease, now, lock=False)
                raise _lost_for(lease, None, None)  # pragma: no cover - _check raised
        return replace(lease, expires_at=renewed)

    def renew_leases(
        self, leases: Sequence[Lease], ttl: timedelta, *, now: datetime | None = None
    ) -> dict[tuple[str, int], datetime]:
        """Renew many leases of one owner in one statement; returns the renewed ones' expiries.

        Keyed by (account, token). A lease missing from the answer was lost
        (expired or claimed since): its holder must stop using it. One
        statement whatever the number of leases, so that a daemon running
        hundreds of accounts renews them all in milliseconds (issue 11).
        """
        _require_ttl(ttl)
        if not leases:
            return {}
        daemon_id = leases[0].owner.daemon_id
        if any(lease.owner.daemon_id != daemon_id for lease in leases):
            raise ValueError("renew_leases renews the leases of one owner at a time")
        pairs = sorted((lease.account, lease.token) for lease in leases)
        renewed: dict[tuple[str, int], datetime] = {}
        # Bounded row-value IN lists, in account order (a lock order for concurrent renewals).
        for start_at in range(0, len(pairs), _RENEW_BATCH):
            chunk = pairs[start_at : start_at + _RENEW_BATCH]
            with LedgerCore._writing(self) as connection:
                start, expires = _times(connection, now, ttl)
                statement = (
                    update(LeaseRow)
                    .where(
                        tuple_(LeaseRow.account, LeaseRow.token).in_(chunk),
                        LeaseRow.daemon_id == daemon_id,
                        LeaseRow.expires_at > start,
                    )
                    .values(expires_at=expires)
                    .returning(LeaseRow.account, LeaseRow.token, LeaseRow.expires_at)
                )
                for row in connection.execute(statement):
                    renewed[(row.account, row.token)] = row.expires_at
        return renewed

    def release_lease(self, lease: Lease, *, now: datetime | None = None) -> None:
        """Give the lease up (it expires at ``now``), if it is still this lease.

        A lease already lost is left to its new holder: releasing it is no error.
        """
        with LedgerCore._writing(self) as connection:
            release(connection, lease, now)

    def check_lease(self, lease: Lease, *, now: datetime | None = None) -> None:
        """Raise :class:`~popvault.errors.LeaseLost` unless ``lease`` is still held.

        Held: the account's row has the lease's token (so no claim came since)
        and has not expired. For the run's checks before each DELE batch and
        before QUIT.
        """
        with LedgerCore._reading(self) as connection:
            _check(connection, lease, now, lock=False)

    def current_lease(self, account: str) -> Lease | None:
        """The account's lease row as it is (live, expired or released), or None."""
        query = select(*_LEASE_COLUMNS).where(LeaseRow.account == account)
        with self._reading() as connection:
            row = connection.execute(query).first()
        return None if row is None else _lease_of(row)

    def leases(self) -> list[Lease]:
        """Every account's lease row as it is (live, expired or released), by account."""
        query = select(*_LEASE_COLUMNS).order_by(LeaseRow.account)
        with self._reading() as connection:
            return [_lease_of(row) for row in connection.execute(query)]

    def fenced(self, lease: Lease, *, clock: Clock | None = None) -> Self:
        """This ledger, with every write fenced by ``lease``.

        The view is a Ledger like this one (a run takes it in place of the
        plain one): reads are the same; each write transaction first locks
        the lease's row and raises :class:`~popvault.errors.LeaseLost`,
        writing nothing, unless the row still has the lease's token and has
        not expired at ``clock()`` (default: see the module docstring). The
        lease methods themselves are not fenced (the holder's heartbeat
        renews through the view). The view shares this ledger's engine:
        closing it closes nothing, and it cannot be used once this ledger
        is closed.
        """
        view = copy.copy(self)
        view._fence = _Fence(lease, clock, self._fence.parent if self._fence else self)
        return view

    def _require_open(self) -> None:
        if self._fence is not None:
            self._fence.parent._require_open()
        super()._require_open()

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One transaction, as LedgerCore's; on a fenced view, checked against its lease first."""
        with super()._writing() as connection:
            fence = self._fence
            if fence is not None:
                now = None if fence.clock is None else fence.clock()
                _check(connection, fence.lease, now, lock=True)
            yield connection


def server_key(host: str | None) -> str | None:
    """A POP3 server's name as leases count it: DNS names are case-insensitive (RFC 4343)."""
    if host is None:
        return None
    return host.strip().rstrip(".").lower() or None


def _require_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise ValueError(f"a lease's time to live must be positive, got {ttl}")


def _times(connection: Connection, now: datetime | None, ttl: timedelta) -> tuple[Any, Any]:
    """(now, now + ttl) as bound values, or as the PostgreSQL server's clock.

    statement_timestamp(): the start of the statement, the same at every use
    within it (clock_timestamp() would differ between claimed_at and the
    expiry test).
    """
    if now is not None:
        require_aware(now, "now")
        return now, now + ttl
    if connection.dialect.name == "postgresql":
        start = func.statement_timestamp(type_=UTCDateTime())
        # An Interval bind: beside a UTCDateTime, a bare timedelta would take its type.
        return start, start + literal(ttl, Interval())
    local = datetime.now(UTC)
    return local, local + ttl


def claim_values(
    account: str, owner: LeaseOwner, claimed: Any, expires: Any, server_host: str | None
) -> dict[str, Any]:
    """The row a claim writes (its first token; a take-over counts on from the row's)."""
    return {
        "account": account,
        "token": 1,
        "owner_host": owner.host,
        "owner_pid": owner.pid,
        "daemon_id": owner.daemon_id,
        "claimed_at": claimed,
        "expires_at": expires,
        "server_host": server_key(server_host),
    }


def release(connection: Connection, lease: Lease, now: datetime | None = None) -> None:
    """Let ``lease`` expire at ``now`` (default: the database's clock), if it is still held."""
    start, _ = _times(connection, now, timedelta(0))
    statement = (
        update(LeaseRow).where(*_held(lease), LeaseRow.expires_at > start).values(expires_at=start)
    )
    connection.execute(statement)


def _claim_statement(connection: Connection, values: dict[str, Any]) -> Any:
    """INSERT the first lease, or take over a free or own one with the next token."""
    statement = upsert_insert(connection, LeaseRow.__table__).values(values)
    new = statement.excluded
    taken = {
        "token": LeaseRow.token + 1,
        "owner_host": new.owner_host,
        "owner_pid": new.owner_pid,
        "daemon_id": new.daemon_id,
        "claimed_at": new.claimed_at,
        "expires_at": new.expires_at,
        "server_host": new.server_host,
    }
    free_or_ours = or_(LeaseRow.expires_at <= new.claimed_at, LeaseRow.daemon_id == new.daemon_id)
    return statement.on_conflict_do_update(
        index_elements=[LeaseRow.account], set_=taken, where=free_or_ours
    ).returning(LeaseRow.token, LeaseRow.claimed_at, LeaseRow.expires_at)


def _held(lease: Lease) -> tuple[ColumnElement[bool], ...]:
    """The lease's row, as long as no claim came since (the token) — by this owner."""
    return (
        LeaseRow.account == lease.account,
        LeaseRow.token == lease.token,
        LeaseRow.daemon_id == lease.owner.daemon_id,
    )


def _check(connection: Connection, lease: Lease, now: datetime | None, *, lock: bool) -> None:
    """Raise LeaseLost unless the account's row carries ``lease``'s token, unexpired.

    With ``lock``, the row stays locked (FOR UPDATE) until the transaction
    ends, so no claim can come between this check and the caller's commit.
    The PostgreSQL clock is read after the lock is granted (clock_timestamp()
    in the same row), not before a wait for it.
    """
    database_clock = now is None and connection.dialect.name == "postgresql"
    columns: list[Any] = [*_LEASE_COLUMNS]
    if database_clock:
        columns.append(func.clock_timestamp(type_=UTCDateTime()).label("now"))
    elif now is None:
        now = datetime.now(UTC)
    query = select(*columns).where(LeaseRow.account == lease.account)
    if lock:
        query = query.with_for_update()
    row = connection.execute(query).first()
    at = row.now if database_clock and row is not None else now
    if row is None or row.token != lease.token or at is None or row.expires_at <= at:
        raise _lost_for(lease, row, at)


def _lost_for(lease: Lease, row: Any, at: datetime | None) -> LeaseLost:
    """The LeaseLost for ``lease``, saying what became of it (``row``: the account's now)."""
    if row is None:
        why = "the ledger has no lease for the account"
    elif row.token != lease.token:
        holder = LeaseOwner(row.owner_host, row.owner_pid, row.daemon_id)
        why = f"claimed since by {holder.describe()} with token {row.token}"
    else:
        why = f"it expired (or was released) at {row.expires_at.isoformat()}"
        if at is not None:
            why = f"{why}, now {at.isoformat()}"
    return LeaseLost(
        f"account {lease.account!r}: lease with token {lease.token} lost: {why}",
        account=lease.account,
        token=lease.token,
    )


_LEASE_COLUMNS = (
    LeaseRow.account,
    LeaseRow.token,
    LeaseRow.owner_host,
    LeaseRow.owner_pid,
    LeaseRow.daemon_id,
    LeaseRow.claimed_at,
    LeaseRow.expires_at,
    LeaseRow.server_host,
)


def _lease_of(row: Any) -> Lease:
    owner = LeaseOwner(row.owner_host, row.owner_pid, row.daemon_id)
    return Lease(row.account, owner, row.token, row.claimed_at, row.expires_at, row.server_host)
