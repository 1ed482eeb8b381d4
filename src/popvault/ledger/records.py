"""What the ledger hands out: plain frozen dataclasses and its own errors.

No SQLAlchemy type appears here; these are the values callers of
:class:`~popvault.ledger.facade.Ledger` see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from popvault.errors import LedgerError


class DuplicateMessage(LedgerError):
    """``record_pending`` was called for a UIDL the account already has.

    The ledger keeps its single row; the caller should discard the copy it
    just wrote, since the ledger vouches for another one.
    """

    def __init__(self, account: str, uidl: str) -> None:
        self.account = account
        self.uidl = uidl
        super().__init__(f"account {account!r}: UIDL {uidl!r} is already in the ledger")


class AccountBusy(LedgerError):
    """Another popvault process holds the account's lock (:meth:`Ledger.account_lock`).

    ``pid`` is that process's id when it could be found out, else None.
    """

    def __init__(self, account: str, pid: int | None) -> None:
        self.account = account
        self.pid = pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"account {account!r} is being archived by another popvault process{holder}; "
            "try again later"
        )


class DaemonRunning(LedgerError):
    """Another ``popvault daemon`` holds this ledger (:meth:`Ledger.daemon_lock`).

    ``pid`` is that process's id when it could be found out, else None.
    """

    def __init__(self, ledger: str, pid: int | None) -> None:
        self.pid = pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"another popvault daemon is already running on the ledger {ledger}{holder}; "
            "only one daemon may use a SQLite ledger"
        )


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message whose file was written but not yet vouched for."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """A message the ledger vouches for: its file is durable in the archive."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str
    archived_at: datetime


@dataclass(frozen=True, slots=True)
class RetainedMessage:
    """An archived message that, as far as the ledger knows, is still on the server."""

    uidl: str
    path: str
    size: int
    archived_at: datetime
    server_size: int | None = None


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What :meth:`Ledger.reconcile` settled: messages popvault ``deleted``
    (QUIT's reply was lost), messages another client took (``gone``),
    delete requests ``cleared`` because the session never reached QUIT, and
    messages marked gone that the server lists again (``returned``)."""

    deleted: int
    gone: int
    cleared: int
    returned: int = 0


@dataclass(frozen=True, slots=True)
class RetentionSummary:
    """The account's retained messages against a retention cutoff.

    ``due`` counts those archived at or before the cutoff;
    ``next_due_archived_at`` is the earliest archive time after it.
    """

    retained: int
    due: int
    next_due_archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """A message that failed to archive ``attempts`` times, the last with ``last_error``."""

    uidl: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_error: str


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What ``popvault status`` shows for one account.

    ``last_run_at`` is when the latest run started; ``last_outcome`` and
    ``last_error`` are that run's ("running" while it goes on);
    ``last_success_at`` is when the latest successful run ended;
    ``on_server`` is the message count of the latest run that listed the
    server; ``failed_messages`` counts messages with recorded failures.
    """

    name: str
    archived_messages: int
    archived_bytes: int
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    last_success_at: datetime | None
    on_server: int | None
    failed_messages: int
