"""What ``popvault status`` shows: the configured accounts joined with the ledger.

Nothing here reads a secret: status works without any password being
available, and prints none. An account that is fine is one line of the
table; one with trouble gets, below the table, what is wrong and what to do
(popvault.advice), the same as ``advice`` in ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from popvault import advice
from popvault.advice import Advice, Subject
from popvault.config import Account, Config, redact_url, sqlite_path
from popvault.errors import LedgerError
from popvault.held import describe as describe_hold
from popvault.humanize import human_size
from popvault.ledger import AccountBusy, AccountStatus, Lease, Ledger, ScheduleEntry
from popvault.plan import MAX_ATTEMPTS
from popvault.redaction import redact
from popvault.retention import describe, due_cutoff, next_due


@dataclass(frozen=True)
class StatusRow:
    """One account as ``status`` shows it (the JSON object has these keys)."""

    name: str
    configured: bool
    archived_messages: int
    archived_bytes: int
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    last_success_at: datetime | None
    retention: str | None
    on_server: int | None
    due_for_deletion: int
    next_deletion_at: datetime | None
    failed_messages: int
    # From a running `popvault daemon` (None without one): its next run of the
    # account, and how many runs in a row failed.
    next_run_at: datetime | None = None
    consecutive_failures: int | None = None
    # Server copies retention will not delete until released (`popvault held`):
    # how many, and the first few of them described.
    held_messages: int = 0
    held: tuple[str, ...] = ()
    # PostgreSQL: who runs the account now, by its live lease ("host pid N (daemon
    # ID)"), since when, and until when the lease lasts unless renewed.
    running_by: str | None = None
    running_since: datetime | None = None
    lease_expires_at: datetime | None = None
    # Sessions the latest run took (more than 1: a server that hands out a
    # window of the mailbox, Gmail); None before any run.
    last_sessions: int | None = None
    # Why a running daemon's next run is off its schedule (a backoff), or None.
    backoff_reason: str | None = None
    # What is wrong and what to do about it; empty when the account is fine.
    advice: tuple[Advice, ...] = ()
    # Messages archived elsewhere (`popvault import`): never fetched by popvault.
    imported_messages: int = 0


log = logging.getLogger("popvault.status")

# Held messages `status` names one by one; `popvault held` lists them all.
SHOWN_HELD: Final = 5


# A daemon refreshes its schedule rows every minute (daemon.main.HEARTBEAT_S);
# rows older than this belong to a daemon that is gone (or hung).
STALE_AFTER: Final = timedelta(minutes=10)


def account_statuses(
    config: Config, ledger: Ledger, *, now: datetime, settle_dead_runs: bool = True
) -> list[StatusRow]:
    """Configured accounts in config order, then accounts only the ledger knows.

    Runs left ``running`` by a process that is gone are marked interrupted first
    (:func:`interrupt_dead_runs`), unless ``settle_dead_runs`` is false: the
    daemon's status page only reads (settling takes each such account's lock
    for a moment, which a run starting then would find taken), and the
    daemon's own runs settle what a dead process left.
    """
    if settle_dead_runs:
        interrupt_dead_runs(ledger)
    known = {status.name: status for status in ledger.status()}
    plans = live_schedules(ledger.schedules(), now=now)
    rows = [
        _configured(account, known.pop(account.name, None), ledger, now)
        for account in config.accounts
    ]
    rows += [_row(name, status) for name, status in sorted(known.items())]
    holders = {lease.account: lease for lease in ledger.leases() if lease.expires_at > now}
    rows = [
        _with_holder(_with_plan(row, plans.get(row.name)), holders.get(row.name)) for row in rows
    ]
    accounts = {account.name: account for account in config.accounts}
    return [
        replace(
            row,
            advice=_advice(row, accounts[row.name], config.file, ledger, holders.get(row.name)),
        )
        if row.configured
        else row
        for row in rows
    ]


def _advice(
    row: StatusRow, account: Account, config_file: Path, ledger: Ledger, lease: Lease | None
) -> tuple[Advice, ...]:
    """What is wrong with a configured account and what to do, most urgent first.

    An account no longer in the config gets none: nothing will run it.
    """
    found = [
        _last_run_advice(row, Subject(account, config_file)),
        _lease_advice(row, lease),
        _failing_advice(row, ledger),
        advice.held(row.name, row.held_messages) if row.held_messages else None,
    ]
    return tuple(item for item in found if item is not None)


def _last_run_advice(row: StatusRow, subject: Subject) -> Advice | None:
    if row.last_run_at is None:
        # A running daemon plans the first run: nothing to do but wait for it.
        return None if row.next_run_at is not None else advice.never_run(row.name)
    if row.last_outcome == "interrupted":
        return _with_retry(advice.interrupted(row.name, row.last_run_at), row)
    if row.last_outcome != "failed" or row.last_error is None:
        return None
    found = advice.run_failed(subject, row.last_error)
    if found.kind == "message_problems" and row.failed_messages:
        return None  # the failing messages' own advice says it, with their error
    return _with_retry(found, row)


def _with_retry(found: Advice, row: StatusRow) -> Advice:
    """The advice, and when a running daemon tries the account again after failures."""
    if row.next_run_at is None or not row.consecutive_failures:
        return found
    when = advice.daemon_retry(row.next_run_at, row.consecutive_failures, row.backoff_reason)
    return replace(found, action=f"{found.action}. {when}")


def _lease_advice(row: StatusRow, lease: Lease | None) -> Advice | None:
    """A live lease whose holder ran on this machine and is gone (PostgreSQL)."""
    if lease is None or lease.owner.host != platform.node() or pid_alive(lease.owner.pid):
        return None
    return advice.stale_lease(row.name, lease.owner.describe(), lease.expires_at)


def _failing_advice(row: StatusRow, ledger: Ledger) -> Advice | None:
    if not row.failed_messages:
        return None
    failures = ledger.failures(row.name)  # read only for accounts that have some
    set_aside = sum(1 for failure in failures if failure.attempts >= MAX_ATTEMPTS)
    latest = max(failures, key=lambda failure: failure.last_failed_at, default=None)
    example = None
    if latest is not None:
        example = f"{latest.key.describe()}: {redact(latest.last_error)}"
    return advice.failing(
        row.name, set_aside=set_aside, retrying=len(failures) - set_aside, example=example
    )


def _with_holder(row: StatusRow, lease: Lease | None) -> StatusRow:
    if lease is None:
        return row
    return replace(
        row,
        running_by=lease.owner.describe(),
        running_since=lease.claimed_at,
        lease_expires_at=lease.expires_at,
    )


def interrupt_dead_runs(ledger: Ledger) -> None:
    """Mark interrupted the ``running`` runs whose account lock is free.

    A live run holds its account's lock for its whole length, and the lock
    dies with its holder (even by SIGKILL): a free lock means the process that
    wrote the row is gone. The lock is taken only for accounts with such a
    row, and only for the instant of the update; a run being started in that
    instant is refused like any overlapping run (the daemon retries). A
    ledger that cannot be written (read-only) is simply shown as it is.
    """
    try:
        for name in ledger.running_accounts():
            with contextlib.suppress(AccountBusy), ledger.account_lock(name):
                ledger.interrupt_runs(name, noticed="by `popvault status`: no process held it")
    except LedgerError as exc:
        log.debug("not marking dead runs interrupted: %s", exc)


def live_schedules(
    entries: list[ScheduleEntry],
    *,
    now: datetime,
    host: str | None = None,
    alive: Callable[[int], bool] | None = None,
) -> dict[str, ScheduleEntry]:
    """The schedule rows of daemons still running, by account.

    A row is stale when it was not refreshed for :data:`STALE_AFTER`, or when
    it comes from this host and its daemon's process is gone.
    """
    this_host = platform.node() if host is None else host
    is_alive = alive or pid_alive
    return {
        entry.account: entry
        for entry in entries
        if now - entry.updated_at <= STALE_AFTER
        and (entry.daemon_host != this_host or is_alive(entry.daemon_pid))
    }


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only the existence and permission checks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _with_plan(row: StatusRow, plan: ScheduleEntry | None) -> StatusRow:
    if plan is None:
        return row
    return replace(
        row,
        next_run_at=plan.next_run_at,
        consecutive_failures=plan.consecutive_failures,
        backoff_reason=plan.backoff_reason,
    )


def _configured(
    account: Account, status: AccountStatus | None, ledger: Ledger, now: datetime
) -> StatusRow:
    policy = account.retention
    summary = ledger.retention_summary(account.name, cutoff=due_cutoff(policy, now))
    held = ledger.held(account.name) if summary.held else []
    return replace(
        _row(account.name, status),
        configured=True,
        retention=describe(policy),
        due_for_deletion=summary.due,
        next_deletion_at=next_due(policy, summary.next_due_archived_at),
        held_messages=summary.held,
        held=tuple(describe_hold(message) for message in held[:SHOWN_HELD]),
    )


def _row(name: str, status: AccountStatus | None) -> StatusRow:
    """A row from the ledger alone (for an account no longer in the config)."""
    if status is None:
        return StatusRow(name, False, 0, 0, None, None, None, None, None, None, 0, None, 0)
    return StatusRow(
        name=name,
        configured=False,
        archived_messages=status.archived_messages,
        archived_bytes=status.archived_bytes,
        last_run_at=status.last_run_at,
        last_outcome=status.last_outcome,
        # Redacted when the run was recorded; again here for rows an older
        # popvault wrote raw (server text with escape sequences, an echoed secret).
        last_error=None if status.last_error is None else redact(status.last_error),
        last_success_at=status.last_success_at,
        retention=None,
        on_server=status.on_server,
        due_for_deletion=0,
        next_deletion_at=None,
        failed_messages=status.failed_messages,
        last_sessions=status.last_sessions,
        imported_messages=status.imported_messages,
    )


def render_json(rows: list[StatusRow]) -> str:
    """A JSON list of objects; times are ISO 8601 in UTC, absent values null.

    ``advice`` is a list of ``{"kind", "problem", "action"}``, or null when
    the account is fine.
    """
    return json.dumps([_json_row(row) for row in rows], indent=2, default=_iso)


def _json_row(row: StatusRow) -> dict[str, object]:
    fields = asdict(row)
    fields["advice"] = [asdict(item) for item in row.advice] or None
    return fields


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def render_locations(config: Config) -> str:
    """Where the archive and the ledger are: the lines above the status table.

    Not in ``--json``, which stays a list of accounts.
    """
    archive = str(config.archive_root)
    if not config.archive_root.exists():
        archive += " (not created yet: the first run creates it)"
    ledger = sqlite_path(config.ledger_url)
    if ledger is None:
        place = redact_url(config.ledger_url)
    else:
        place = str(ledger) + ("" if ledger.exists() else " (not created yet)")
    return f"archive: {archive}\nledger:  {place}"


def render_table(rows: list[StatusRow]) -> str:
    """A plain-text table for people: one line per account, then what needs doing.

    An account that is fine is its line alone. Below the table: each
    account being archived at this moment, and each problem with what to do
    about it (the row's :attr:`StatusRow.advice`).
    """
    if not rows:
        return "no accounts configured and none in the ledger"
    # STORED: the archived files' octets (Maildir keeps LF line ends), not the
    # octets `run` reports as downloaded.
    header = (
        "ACCOUNT",
        "ARCHIVED",
        "STORED",
        "ON SERVER",
        "RETENTION",
        "LAST RUN (UTC)",
        "OUTCOME",
        "NEXT RUN (UTC)",
    )
    lines = [header] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    notes = [note for row in rows for note in _notes(row)]
    return "\n".join(out + (["", *notes] if notes else []))


def _archived_cell(row: StatusRow) -> str:
    """The messages popvault archived, and those another tool did (``popvault import``)."""
    if not row.imported_messages:
        return str(row.archived_messages)
    return f"{row.archived_messages} (+{row.imported_messages} imported)"


def _cells(row: StatusRow) -> tuple[str, ...]:
    name = row.name if row.configured else f"{row.name} (not in config)"
    on_server = "?" if row.on_server is None else str(row.on_server)
    return (
        name,
        _archived_cell(row),
        human_size(row.archived_bytes),
        on_server,
        _retention_cell(row),
        _when(row.last_run_at) or "never",
        _outcome_cell(row),
        _when(row.next_run_at) or "-",
    )


def _retention_cell(row: StatusRow) -> str:
    """The policy as written, and what it will delete: ``after 14d, 3 due`` / ``, next ...``."""
    if row.retention is None:
        return "-"
    if row.due_for_deletion:
        return f"{row.retention}, {row.due_for_deletion} due"
    if row.next_deletion_at is not None:
        return f"{row.retention}, next {row.next_deletion_at:%Y-%m-%d %H:%M}"
    return row.retention


def _outcome_cell(row: StatusRow) -> str:
    """The last run's outcome; ``ok (3 sessions)`` for a server that hands out a window (Gmail)."""
    outcome = row.last_outcome or "-"
    if row.last_sessions is not None and row.last_sessions > 1:
        return f"{outcome} ({row.last_sessions} sessions)"
    return outcome


def _notes(row: StatusRow) -> list[str]:
    """The lines under the table for one account: a run going on, each problem and its fix."""
    notes = []
    if row.running_by is not None:
        notes.append(
            f"{row.name}: being archived now by {row.running_by} since "
            f"{_when(row.running_since)} UTC (lease until {_when(row.lease_expires_at)} UTC)"
        )
    for item in row.advice:
        notes.append(f"{row.name}: {item.problem}")
        if item.kind == "held":
            notes += [f"{row.name}:   {held}" for held in row.held]
        notes.append(f"{row.name}:   -> {item.action}")
    return notes


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else None
