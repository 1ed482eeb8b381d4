"""Runs: one row per sync session of an account, from start to outcome."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Update, bindparam, delete, func, insert, or_, select, update

from popvault.errors import LedgerError
from popvault.ledger.core import LedgerCore, require_aware
from popvault.ledger.models import Run

_FINAL_OUTCOMES = frozenset({"ok", "failed"})
# How often one Ledger prunes an account's runs (prune_runs_now): keep_runs is
# days or months, so an hour's more rows are nothing.
PRUNE_EVERY = timedelta(hours=1)

log = logging.getLogger("popvault.ledger")


class RunsMixin(LedgerCore):
    """The Ledger's record of sync runs."""

    def start_run(self, account: str, *, started_at: datetime) -> int:
        """Record the start of a sync run and return its id.

        The caller holds the account's lock (:meth:`account_lock`), so no other
        run of the account is alive: a row of it still ``running`` is a run
        whose process died (SIGKILL, a power cut). It is marked
        ``interrupted`` in the same transaction.
        """
        require_aware(started_at, "started_at")
        statement = insert(Run).values(
            account=account, started_at=started_at, outcome="running", messages=0, bytes=0
        )
        with self._writing() as connection:
            stale = connection.execute(*_interrupt(account, "by the account's next run")).rowcount
            key = connection.execute(statement).inserted_primary_key
        if stale:
            log.warning(
                "account %r: %d earlier run(s) never recorded an outcome (the process was "
                "killed or crashed); marked interrupted",
                account,
                stale,
            )
        if key is None:  # pragma: no cover - every backend we support returns it
            raise LedgerError(f"account {account!r}: the new run got no id")
        run_id: int = key[0]
        return run_id

    def finish_run(
        self,
        run_id: int,
        *,
        ended_at: datetime,
        outcome: str,
        messages: int,
        bytes: int,
        error: str | None,
        on_server: int | None = None,
        sessions: int = 1,
    ) -> None:
        """Record how a running run ended: ``outcome`` is "ok" or "failed".

        ``on_server`` is how many UIDLs the server listed (None if the run
        never got that far); ``sessions`` how many sessions the run took (at
        least 1). Raises :class:`LedgerError` if no such run is running.
        """
        require_aware(ended_at, "ended_at")
        _check_run_end(outcome=outcome, messages=messages, octets=bytes, on_server=on_server)
        if sessions < 1:
            raise ValueError(f"a run takes at least one session, got {sessions}")
        values = {
            "ended_at": ended_at,
            "outcome": outcome,
            "messages": messages,
            "bytes": bytes,
            "error": error,
            "on_server": on_server,
            "sessions": sessions,
        }
        statement = update(Run).where(Run.id == run_id, Run.outcome == "running").values(values)
        with self._writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise LedgerError(f"run {run_id} does not exist or has already finished")

    def running_accounts(self) -> list[str]:
        """The accounts that have a run marked ``running``, sorted."""
        query = select(Run.account).where(Run.outcome == "running").distinct()
        with self._reading() as connection:
            return sorted(connection.scalars(query))

    def interrupt_runs(self, account: str, *, noticed: str) -> int:
        """Mark every ``running`` run of ``account`` interrupted; returns how many.

        Only for a caller that holds the account's lock (then no run of the
        account is alive). ``noticed`` says who found them, for the error text.
        """
        with self._writing() as connection:
            count: int = connection.execute(*_interrupt(account, noticed)).rowcount
        return count

    def prune_runs_now(self, account: str, *, keep: timedelta, now: datetime) -> int:
        """:meth:`prune_runs` of the runs older than ``keep``, at most once an hour an account.

        After every run of an account, as ``[ledger] keep_runs`` says; a
        daemon running the account every few minutes prunes it on the first
        run and then hourly (a week-old history's one extra hour of rows is
        nothing; a write transaction every tick is a quarter of an idle
        tick's ledger work). Returns how many runs went (0 when skipped).
        """
        last = self._runs_pruned_at.get(account)
        if last is not None and timedelta(0) <= now - last < PRUNE_EVERY:
            return 0
        removed = self.prune_runs(account, before=now - keep)
        self._runs_pruned_at[account] = now
        return removed

    def prune_runs(self, account: str, *, before: datetime) -> int:
        """Delete the account's finished runs that started before ``before``; returns how many.

        ``[ledger] keep_runs`` (issue 11: a daemon running 10,000 accounts every
        few minutes writes millions of rows a month). Kept whatever their age:
        a run still ``running`` (its process may live), and the three runs
        ``popvault status`` reads (the latest, the latest success, the latest
        that got a listing), so that an account failing for months still says
        when it last worked.
        """
        require_aware(before, "before")
        mine = Run.account == account
        shown = [
            select(func.max(Run.id)).where(mine).scalar_subquery(),
            select(func.max(Run.id)).where(mine, Run.outcome == "ok").scalar_subquery(),
            select(func.max(Run.id)).where(mine, Run.on_server.is_not(None)).scalar_subquery(),
        ]
        statement = delete(Run).where(
            mine,
            Run.started_at < before,
            Run.outcome != "running",
            *(or_(shown_id.is_(None), Run.id != shown_id) for shown_id in shown),
        )
        with self._writing() as connection:
            return int(connection.execute(statement).rowcount)


# Built once: every run's start sends it (statements cost about as much CPU to
# build as to run on SQLite: the daemon's idle tick).
_INTERRUPT = (
    update(Run)
    # Parameter names that are no column's: an UPDATE keeps those for its SET.
    .where(Run.account == bindparam("of_account"), Run.outcome == "running")
    .values(outcome="interrupted", error=bindparam("interrupted_error"))
)


def _interrupt(account: str, noticed: str) -> tuple[Update, dict[str, str]]:
    """The runs of ``account`` still marked running become interrupted (no end time: unknown).

    The statement and its parameters.
    """
    error = (
        f"the run never recorded an outcome: its process was killed or crashed (noticed {noticed})"
    )
    return _INTERRUPT, {"of_account": account, "interrupted_error": error}


def _check_run_end(*, outcome: str, messages: int, octets: int, on_server: int | None) -> None:
    if outcome not in _FINAL_OUTCOMES:
        raise ValueError(f"outcome must be 'ok' or 'failed', got {outcome!r}")
    if messages < 0 or octets < 0 or (on_server is not None and on_server < 0):
        raise ValueError(
            f"counts must not be negative (messages={messages}, bytes={octets}, "
            f"on_server={on_server})"
        )
