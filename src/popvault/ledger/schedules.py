"""The ``schedules`` table: what a running daemon plans for each account.

The module functions are the queries; :class:`SchedulesMixin`, a part of
:class:`~popvault.ledger.facade.Ledger`, wraps them in its transactions and
hands out :class:`ScheduleEntry` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, update

from popvault.ledger.core import LedgerCore, among, require_aware, upsert_insert
from popvault.ledger.models import Schedule


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One account's plan, as the daemon ``daemon_pid`` on ``daemon_host`` wrote it.

    ``next_run_at`` is None while no run is planned (a run is going on, or the
    daemon is stopping); ``backoff_reason`` says why the next run is later or
    sooner than the schedule (None: on schedule).
    """

    account: str
    next_run_at: datetime | None
    consecutive_failures: int
    backoff_reason: str | None
    daemon_pid: int
    daemon_host: str
    updated_at: datetime


def upsert(connection: Connection, entry: ScheduleEntry) -> None:
    """Insert the entry, or replace the account's row."""
    values: dict[str, Any] = asdict(entry)
    statement = upsert_insert(connection, Schedule).values(values)
    changed = {key: value for key, value in values.items() if key != "account"}
    connection.execute(
        statement.on_conflict_do_update(index_elements=[Schedule.account], set_=changed)
    )


def insert_many(connection: Connection, entries: Sequence[ScheduleEntry], *, replace: bool) -> None:
    """Insert the entries in one executemany: replacing existing rows, or leaving them be."""
    if not entries:
        return
    statement = upsert_insert(connection, Schedule)
    if replace:
        new = statement.excluded
        columns = [key for key in ScheduleEntry.__dataclass_fields__ if key != "account"]
        statement = statement.on_conflict_do_update(
            index_elements=[Schedule.account], set_={key: new[key] for key in columns}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=[Schedule.account])
    connection.execute(statement, [asdict(entry) for entry in entries])


def select_all(connection: Connection) -> list[ScheduleEntry]:
    """Every row, by account name."""
    query = select(
        Schedule.account,
        Schedule.next_run_at,
        Schedule.consecutive_failures,
        Schedule.backoff_reason,
        Schedule.daemon_pid,
        Schedule.daemon_host,
        Schedule.updated_at,
    ).order_by(Schedule.account)
    return [ScheduleEntry(*row) for row in connection.execute(query)]


def touch(
    connection: Connection,
    *,
    pid: int,
    host: str,
    at: datetime,
    adopt: Sequence[str] = (),
    stale_before: datetime | None = None,
) -> None:
    """Refresh ``updated_at`` of every row of one daemon: it is still alive.

    Rows of ``adopt`` not refreshed since ``stale_before`` (their writer
    stopped or died) become this daemon's too: on a ledger shared by several
    daemons, the rows of one that left stay live while another runs.
    """
    mine = and_(Schedule.daemon_pid == pid, Schedule.daemon_host == host)
    if adopt and stale_before is not None:
        orphan = and_(
            Schedule.updated_at < stale_before, among(Schedule.account, list(adopt), connection)
        )
        mine = or_(mine, orphan)
    values = {"updated_at": at, "daemon_pid": pid, "daemon_host": host}
    connection.execute(update(Schedule).where(mine).values(values))


def remove(connection: Connection, *, pid: int, host: str, accounts: Sequence[str] | None) -> None:
    """Delete one daemon's rows: those of ``accounts``, or all of them (None)."""
    statement = delete(Schedule).where(Schedule.daemon_pid == pid, Schedule.daemon_host == host)
    if accounts is not None:
        statement = statement.where(Schedule.account.in_(list(accounts)))
    connection.execute(statement)


class SchedulesMixin(LedgerCore):
    """The Ledger's copy of each daemon's plans, for ``popvault status``."""

    def save_schedule(self, entry: ScheduleEntry) -> None:
        """Record (or replace) an account's next run as planned by a daemon."""
        require_aware(entry.updated_at, "updated_at")
        with self._writing() as connection:
            upsert(connection, entry)

    def schedules(self) -> list[ScheduleEntry]:
        """Every account's recorded plan, live or stale, by account name."""
        with self._reading() as connection:
            return select_all(connection)

    def touch_schedules(
        self,
        *,
        pid: int,
        host: str,
        at: datetime,
        adopt: Sequence[str] = (),
        stale_before: datetime | None = None,
    ) -> None:
        """Mark one daemon's rows as fresh, and adopt the stale rows of ``adopt``."""
        require_aware(at, "at")
        with self._writing() as connection:
            touch(connection, pid=pid, host=host, at=at, adopt=adopt, stale_before=stale_before)

    def drop_schedules(self, *, pid: int, host: str, accounts: Sequence[str] | None = None) -> None:
        """Forget one daemon's plans for ``accounts`` (None: all of them)."""
        with self._writing() as connection:
            remove(connection, pid=pid, host=host, accounts=accounts)
