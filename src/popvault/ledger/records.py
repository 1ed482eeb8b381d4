"""What the ledger hands out: plain frozen dataclasses (two named tuples) and its own errors.

No SQLAlchemy type appears here; these are the values callers of
:class:`~popvault.ledger.facade.Ledger` see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeAlias

from popvault.errors import LedgerError


@dataclass(frozen=True, slots=True, order=True)
class MessageKey:
    """Which message of an account: its UIDL and its occurrence under that UIDL.

    RFC 1939 section 7 makes a UIDL unique within a maildrop, but servers
    that derive it from the content (mbox servers do) give byte-identical
    messages the same UIDL. ``occurrence`` tells them apart: 1 for the first
    message the ledger recorded under the UIDL, 2 for the second, and so on.
    Which listed message is which occurrence is the caller's matching (by
    size, order and content hash); the ledger only keeps the numbers apart.
    """

    uidl: str
    occurrence: int = 1

    def __post_init__(self) -> None:
        # bool is an int: refuse it, or True would pass for occurrence 1.
        if isinstance(self.occurrence, bool) or not isinstance(self.occurrence, int):
            raise TypeError(f"occurrence must be an int, got {self.occurrence!r}")
        if self.occurrence < 1:
            raise ValueError(f"occurrence must be at least 1, got {self.occurrence}")

    def describe(self) -> str:
        """``UIDL 'x'``, naming the occurrence only past the first (most UIDLs have one)."""
        if self.occurrence == 1:
            return f"UIDL {self.uidl!r}"
        return f"UIDL {self.uidl!r} (occurrence {self.occurrence})"


# What the facade takes wherever it names a message: a plain UIDL means its
# first occurrence, so callers written before occurrences keep working.
KeyLike: TypeAlias = str | MessageKey


def as_key(key: KeyLike) -> MessageKey:
    """The :class:`MessageKey` for ``key``: a plain UIDL string is occurrence 1."""
    if isinstance(key, MessageKey):
        return key
    if isinstance(key, str):
        return MessageKey(key)
    raise TypeError(f"a message key is a UIDL string or a MessageKey, got {key!r}")


class DuplicateMessage(LedgerError):
    """``record_pending`` was called for a message key the account already has.

    The ledger keeps its single row; the caller should discard the copy it
    just wrote, since the ledger vouches for another one.
    """

    def __init__(self, account: str, uidl: str, occurrence: int = 1) -> None:
        self.account = account
        self.uidl = uidl
        self.occurrence = occurrence
        described = MessageKey(uidl, occurrence).describe()
        super().__init__(f"account {account!r}: {described} is already in the ledger")

    @property
    def key(self) -> MessageKey:
        """The key that is already taken."""
        return MessageKey(self.uidl, self.occurrence)


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


# Every record that names a message has ``occurrence`` last, with a default:
# records built positionally before occurrences existed still mean occurrence 1.


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message for :meth:`Ledger.record_pending_many`: the arguments of ``record_pending``."""

    key: MessageKey
    path: str
    size: int
    sha256: str
    server_size: int | None
    first_seen_at: datetime
    received_size: int | None = None
    hold_reason: str | None = None
    held_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message whose file was written but not yet vouched for."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str
    occurrence: int = 1

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """A message the ledger vouches for: its file is durable in the archive."""

    account: str
    uidl: str
    path: str
    size: int
    sha256: str
    archived_at: datetime
    occurrence: int = 1

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)


class RetainedMessage(NamedTuple):
    """An archived message that, as far as the ledger knows, is still on the server.

    ``hold_reason`` is set while the server copy must not be deleted by
    retention (see :meth:`Ledger.hold`); None lets retention delete it.

    A named tuple like :class:`KnownRow`, for the same reason: retention
    builds one per message on the server each run (100k for a 100k-message
    mailbox kept on the server).
    """

    uidl: str
    path: str
    size: int
    archived_at: datetime
    server_size: int | None = None
    occurrence: int = 1
    hold_reason: str | None = None

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)

    @property
    def held(self) -> bool:
        """Whether a hold forbids deleting the server copy."""
        return self.hold_reason is not None


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A retained message whose server copy retention must not delete, and why.

    ``server_size`` is what the server's LIST announced, ``received_size``
    the octets popvault received (line ends counted as CRLF); either is None
    when it was not recorded.
    """

    uidl: str
    occurrence: int
    path: str
    server_size: int | None
    received_size: int | None
    reason: str
    held_at: datetime

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)


class ImportedUidl(NamedTuple):
    """A UIDL to record as archived elsewhere: when the other tool saw it, and where from.

    ``source_file`` is the state file that named it, or the Maildir file the
    message was matched to.
    """

    uidl: str
    seen_at: datetime | None
    source_file: str


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What one import recorded: new UIDLs, and those left as they were."""

    recorded: int
    # Imported before: the first import stands.
    already_imported: int
    # Archived by popvault itself: its own copy stands.
    already_archived: int


class ImportedMessage(NamedTuple):
    """A message archived elsewhere, as a run sees it.

    Retention may delete its server copy only if ``allow_delete``; its age
    counts from ``seen_at`` (when the other tool saw it) or ``imported_at``.
    """

    uidl: str
    source: str
    seen_at: datetime | None
    imported_at: datetime
    allow_delete: bool
    deleted_at: datetime | None

    @property
    def archived_at(self) -> datetime:
        """When it counts as archived, for the retention policy."""
        return self.seen_at if self.seen_at is not None else self.imported_at


class KnownRow(NamedTuple):
    """Everything the ledger knows of one message row, for matching a listing to it.

    ``state`` is "pending" or "archived"; ``size`` and ``sha256`` describe
    the stored file; ``deleted`` means popvault deleted the server copy,
    ``gone`` that it vanished from the server without popvault.

    A named tuple, not a dataclass like the other records: every run builds one
    per listed message (100k for a 100k-message mailbox), and a tuple is made
    from a database row in one step, ~3x faster than a frozen dataclass's
    eleven attribute writes.
    """

    uidl: str
    occurrence: int
    state: str
    path: str
    size: int
    sha256: str
    server_size: int | None
    archived_at: datetime | None
    deleted: bool
    gone: bool
    hold_reason: str | None

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)


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
    ``held`` counts retained messages under a hold: they are part of
    ``retained`` but never of ``due`` nor of ``next_due_archived_at``, since
    no run will delete them.
    """

    retained: int
    due: int
    next_due_archived_at: datetime | None
    held: int = 0


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """A message that failed to archive ``attempts`` times, the last with ``last_error``."""

    uidl: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    last_error: str
    occurrence: int = 1

    @property
    def key(self) -> MessageKey:
        """The message's (uidl, occurrence)."""
        return MessageKey(self.uidl, self.occurrence)


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What ``popvault status`` shows for one account.

    ``last_run_at`` is when the latest run started; ``last_outcome`` and
    ``last_error`` are that run's ("running" while it goes on);
    ``last_success_at`` is when the latest successful run ended;
    ``on_server`` is the message count of the latest run that listed the
    server; ``failed_messages`` counts messages with recorded failures;
    ``held_messages`` counts retained messages whose server copy is held
    (retention will not delete it until the user releases it);
    ``last_sessions`` is how many sessions the latest run took;
    ``imported_messages`` counts the messages archived elsewhere that
    ``popvault import`` recorded (never fetched by popvault).
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
    held_messages: int = 0
    last_sessions: int | None = None
    imported_messages: int = 0
