"""The ledger: which messages of which account popvault has safely archived.

This package is the only part of popvault that imports SQLAlchemy or Alembic.
It takes a database URL (``sqlite:///path`` or ``postgresql://...``) and knows
nothing of the configuration, POP3 or the store; the rest of popvault sees the
:class:`Ledger` facade and plain dataclasses.
"""

from __future__ import annotations

from popvault.ledger.dispatch import DueRun
from popvault.ledger.engine import BACKUP_INFIX
from popvault.ledger.facade import Ledger
from popvault.ledger.keeper import AccountHold
from popvault.ledger.leases import Lease, LeaseOwner, LeaseTerms, server_key
from popvault.ledger.migrate import UPGRADE_COMMAND, check, current, upgrade
from popvault.ledger.records import (
    AccountBusy,
    AccountStatus,
    ArchivedMessage,
    DaemonRunning,
    DuplicateMessage,
    FailedMessage,
    HeldMessage,
    ImportedMessage,
    ImportedUidl,
    ImportOutcome,
    KeyLike,
    KnownRow,
    MessageKey,
    NewMessage,
    PendingMessage,
    Reconciled,
    RetainedMessage,
    RetentionSummary,
    as_key,
)
from popvault.ledger.schedules import ScheduleEntry

__all__ = [
    "BACKUP_INFIX",
    "UPGRADE_COMMAND",
    "AccountBusy",
    "AccountHold",
    "AccountStatus",
    "ArchivedMessage",
    "DaemonRunning",
    "DueRun",
    "DuplicateMessage",
    "FailedMessage",
    "HeldMessage",
    "ImportOutcome",
    "ImportedMessage",
    "ImportedUidl",
    "KeyLike",
    "KnownRow",
    "Lease",
    "LeaseOwner",
    "LeaseTerms",
    "Ledger",
    "MessageKey",
    "NewMessage",
    "PendingMessage",
    "Reconciled",
    "RetainedMessage",
    "RetentionSummary",
    "ScheduleEntry",
    "as_key",
    "check",
    "current",
    "server_key",
    "upgrade",
]
