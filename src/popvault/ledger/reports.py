"""Reports: per-account totals and the latest runs, for ``popvault status``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, Select, bindparam, func, literal, select, union, union_all

from popvault.ledger.core import LedgerCore
from popvault.ledger.models import AccountTotals, Failure, Imported, Message, Run
from popvault.ledger.records import AccountStatus


class ReportsMixin(LedgerCore):
    """The Ledger's read-only summaries across accounts."""

    def status(self) -> list[AccountStatus]:
        """One entry per account that has messages, failures or runs, sorted by name."""
        with self._reading() as connection:
            totals = {row.account: row for row in connection.execute(_totals_query())}
            last = {row.account: row for row in connection.execute(_last_run_query())}
        return [
            _account_status(name, totals.get(name), last.get(name))
            for name in sorted(totals.keys() | last.keys())
        ]

    def accounts(self) -> list[str]:
        """Every account that has messages or runs, sorted."""
        query = union(select(AccountTotals.account), select(Run.account))
        with self._reading() as connection:
            return sorted(connection.scalars(query))

    def archived_totals(self, account: str) -> tuple[int, int]:
        """The account's archived messages and their stored octets (what status shows).

        One row of account_totals, which the archiving transactions keep
        (models.AccountTotals), however many messages the account has.
        """
        with self._reading() as connection:
            row = connection.execute(_TOTALS_OF_ACCOUNT, {"account": account}).one_or_none()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def archived_totals_by_account(self) -> dict[str, tuple[int, int]]:
        """:meth:`archived_totals` of every account at once (one read of account_totals).

        For a daemon starting with thousands of accounts: one statement
        instead of one per account.
        """
        query = select(
            AccountTotals.account, AccountTotals.archived_messages, AccountTotals.archived_octets
        )
        with self._reading() as connection:
            return {row[0]: (int(row[1]), int(row[2])) for row in connection.execute(query)}


# Built once: every run reads it twice (statements cost about as much CPU to
# build as to run on SQLite: the daemon's idle tick).
_TOTALS_OF_ACCOUNT = select(AccountTotals.archived_messages, AccountTotals.archived_octets).where(
    AccountTotals.account == bindparam("account")
)


def _totals_query() -> Select[str, int, int, int, int, int]:
    """Per account: archived messages, their octets, failed, held and imported messages.

    Every source is small: a row an account, the failures, the held
    messages (through ix_messages_held) and the imported ones (a count of
    the unique index of ``imported``); none reads the messages at large.
    """
    per_account = select(
        AccountTotals.account.label("account"),
        AccountTotals.archived_messages.label("archived"),
        AccountTotals.archived_octets.label("octets"),
        literal(0).label("failed"),
        literal(0).label("held"),
        literal(0).label("imported"),
    )
    per_failure = select(
        Failure.account, literal(0), literal(0), literal(1), literal(0), literal(0)
    )
    # Held as retention sees it: archived, still on the server, with a hold. The
    # index condition is spelled as the index's own, so both planners use it.
    per_hold = select(
        Message.account, literal(0), literal(0), literal(0), literal(1), literal(0)
    ).where(
        Message.hold_reason.is_not(None),
        Message.state == "archived",
        Message.deleted_at.is_(None),
        Message.gone_at.is_(None),
    )
    per_import = select(
        Imported.account, literal(0), literal(0), literal(0), literal(0), func.count()
    ).group_by(Imported.account)
    rows = union_all(per_account, per_failure, per_hold, per_import).subquery()
    return select(
        rows.c.account,
        func.sum(rows.c.archived).label("archived"),
        func.sum(rows.c.octets).label("octets"),
        func.sum(rows.c.failed).label("failed"),
        func.sum(rows.c.held).label("held"),
        func.sum(rows.c.imported).label("imported"),
    ).group_by(rows.c.account)


def _last_run_query() -> Select[str, datetime, str, str | None, datetime | None, int | None, int]:
    """Per account: the latest run (the highest id: clocks may step back), when
    the latest successful one ended, and the latest server message count."""
    latest = select(func.max(Run.id)).group_by(Run.account).scalar_subquery()
    other = Run.__table__.alias().c
    success_at = (
        select(func.max(other.ended_at))
        .where(other.account == Run.account, other.outcome == "ok")
        .scalar_subquery()
    )
    on_server = (
        select(other.on_server)
        .where(other.account == Run.account, other.on_server.is_not(None))
        .order_by(other.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return select(
        Run.account,
        Run.started_at,
        Run.outcome,
        Run.error,
        success_at.label("success_at"),
        on_server.label("on_server"),
        Run.sessions,
    ).where(Run.id.in_(latest))


def _account_status(
    name: str,
    totals: Row[str, int, int, int, int, int] | None,
    last: Row[str, datetime, str, str | None, datetime | None, int | None, int] | None,
) -> AccountStatus:
    return AccountStatus(
        name=name,
        archived_messages=int(totals.archived) if totals else 0,
        archived_bytes=int(totals.octets) if totals else 0,
        last_run_at=last.started_at if last else None,
        last_outcome=last.outcome if last else None,
        last_error=last.error if last else None,
        last_success_at=last.success_at if last else None,
        on_server=last.on_server if last else None,
        failed_messages=int(totals.failed) if totals else 0,
        held_messages=int(totals.held) if totals else 0,
        imported_messages=int(totals.imported) if totals else 0,
        last_sessions=last.sessions if last else None,
    )
